package controller

import (
	"context"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// permanentError is a problem a retry cannot fix: the sync reports it as a Warning and waits for a
// change to the objects.
type permanentError struct{ Problem }

func (e *permanentError) Error() string { return e.Message }

func permanent(reason, format string, args ...any) error {
	return &permanentError{Problem{Reason: reason, Message: fmt.Sprintf(format, args...)}}
}

// resolveCredentials reads the admin credentials the way PRODUCT.md promises: the Secret named by
// couchdb.io/admin-secret, else COUCHDB_USER/COUCHDB_PASSWORD of the CouchDB container as the official
// image reads them. version changes whenever any object read changes, so a fixed Secret is noticed.
func (c *Controller) resolveCredentials(ctx context.Context, sts *appsv1.StatefulSet) (Credentials, string, error) {
	r := &envResolver{c: c, ctx: ctx, ns: sts.Namespace, secrets: map[string]*corev1.Secret{}, configMaps: map[string]*corev1.ConfigMap{}}
	if name := sts.Annotations[AnnotationAdminSecret]; name != "" {
		s, err := r.secret(name)
		if err != nil {
			return Credentials{}, "", err
		}
		for _, keys := range [][2]string{{"adminUsername", "adminPassword"}, {"username", "password"}} {
			u, okU := s.Data[keys[0]]
			p, okP := s.Data[keys[1]]
			if okU && okP {
				creds := Credentials{Username: string(u), Password: string(p)}
				if err := checkCredentials(creds, "Secret "+sts.Namespace+"/"+name); err != nil {
					return Credentials{}, "", err
				}
				return creds, r.version(), nil
			}
		}
		return Credentials{}, "", permanent(ReasonCredentialsInvalid,
			"Secret %s/%s (from %s on StatefulSet %s) has neither adminUsername/adminPassword nor username/password keys: add them",
			sts.Namespace, name, AnnotationAdminSecret, sts.Name)
	}
	ctr := couchContainer(&sts.Spec.Template.Spec)
	if ctr == nil {
		return Credentials{}, "", permanent(ReasonCredentialsInvalid, "StatefulSet %s/%s has no containers", sts.Namespace, sts.Name)
	}
	env, err := r.env(ctr)
	if err != nil {
		return Credentials{}, "", err
	}
	creds := Credentials{Username: env["COUCHDB_USER"], Password: env["COUCHDB_PASSWORD"]}
	if creds.Username == "" || creds.Password == "" {
		return Credentials{}, "", permanent(ReasonCredentialsInvalid,
			"StatefulSet %s/%s: no admin credentials: set the %s annotation to a Secret with adminUsername/adminPassword, or COUCHDB_USER and COUCHDB_PASSWORD on container %s",
			sts.Namespace, sts.Name, AnnotationAdminSecret, ctr.Name)
	}
	if err := checkCredentials(creds, "the env of container "+ctr.Name); err != nil {
		return Credentials{}, "", err
	}
	return creds, r.version(), nil
}

// checkCredentials refuses values that cannot be a CouchDB admin (binary junk, line breaks), without
// ever echoing them.
func checkCredentials(c Credentials, source string) error {
	for _, v := range []string{c.Username, c.Password} {
		if !utf8.ValidString(v) || strings.IndexFunc(v, unicode.IsControl) >= 0 {
			return permanent(ReasonCredentialsInvalid, "admin credentials from %s contain bytes that are not printable UTF-8 (a trailing newline from `echo` is a common cause): store them without it", source)
		}
	}
	if strings.Contains(c.Username, ":") {
		return permanent(ReasonCredentialsInvalid, "admin username from %s contains ':', which basic auth cannot carry", source)
	}
	return nil
}

func couchContainer(spec *corev1.PodSpec) *corev1.Container {
	for i := range spec.Containers {
		if spec.Containers[i].Name == "couchdb" {
			return &spec.Containers[i]
		}
	}
	if len(spec.Containers) > 0 {
		return &spec.Containers[0]
	}
	return nil
}

type envResolver struct {
	c          *Controller
	ctx        context.Context
	ns         string
	secrets    map[string]*corev1.Secret
	configMaps map[string]*corev1.ConfigMap
}

func (r *envResolver) version() string {
	var parts []string
	for n, s := range r.secrets {
		parts = append(parts, "s/"+n+"@"+s.ResourceVersion)
	}
	for n, cm := range r.configMaps {
		parts = append(parts, "c/"+n+"@"+cm.ResourceVersion)
	}
	sortStrings(parts)
	return strings.Join(parts, ",")
}

func (r *envResolver) secret(name string) (*corev1.Secret, error) {
	if s, ok := r.secrets[name]; ok {
		return s, nil
	}
	s, err := r.c.kube.CoreV1().Secrets(r.ns).Get(r.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, permanent(ReasonCredentialsInvalid, "Secret %s/%s holding the CouchDB admin credentials does not exist: create it", r.ns, name)
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", r.ns, name, err)
	}
	r.secrets[name] = s
	return s, nil
}

func (r *envResolver) configMap(name string) (*corev1.ConfigMap, error) {
	if cm, ok := r.configMaps[name]; ok {
		return cm, nil
	}
	cm, err := r.c.kube.CoreV1().ConfigMaps(r.ns).Get(r.ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, permanent(ReasonCredentialsInvalid, "ConfigMap %s/%s referenced for the CouchDB admin credentials does not exist: create it", r.ns, name)
	}
	if err != nil {
		return nil, fmt.Errorf("get configmap %s/%s: %w", r.ns, name, err)
	}
	r.configMaps[name] = cm
	return cm, nil
}

// env resolves only COUCHDB_USER and COUCHDB_PASSWORD (envFrom first, env after, as the kubelet
// does); other variables are never read, so no unrelated secret is fetched.
func (r *envResolver) env(ctr *corev1.Container) (map[string]string, error) {
	want := map[string]bool{"COUCHDB_USER": true, "COUCHDB_PASSWORD": true}
	out := map[string]string{}
	for _, from := range ctr.EnvFrom {
		optional := false
		var data map[string]string
		switch {
		case from.SecretRef != nil:
			optional = from.SecretRef.Optional != nil && *from.SecretRef.Optional
			s, err := r.secret(from.SecretRef.Name)
			if err != nil {
				if optional && isPermanent(err) {
					continue
				}
				return nil, err
			}
			data = map[string]string{}
			for k, v := range s.Data {
				data[k] = string(v)
			}
		case from.ConfigMapRef != nil:
			optional = from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional
			cm, err := r.configMap(from.ConfigMapRef.Name)
			if err != nil {
				if optional && isPermanent(err) {
					continue
				}
				return nil, err
			}
			data = cm.Data
		}
		for k, v := range data {
			if want[from.Prefix+k] {
				out[from.Prefix+k] = v
			}
		}
	}
	for _, e := range ctr.Env {
		if !want[e.Name] {
			continue
		}
		if e.ValueFrom == nil {
			out[e.Name] = e.Value
			continue
		}
		switch {
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			s, err := r.secret(ref.Name)
			if err != nil {
				return nil, err
			}
			v, ok := s.Data[ref.Key]
			if !ok {
				return nil, permanent(ReasonCredentialsInvalid, "Secret %s/%s has no key %s (referenced by %s): add it", r.ns, ref.Name, ref.Key, e.Name)
			}
			out[e.Name] = string(v)
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			cm, err := r.configMap(ref.Name)
			if err != nil {
				return nil, err
			}
			v, ok := cm.Data[ref.Key]
			if !ok {
				return nil, permanent(ReasonCredentialsInvalid, "ConfigMap %s/%s has no key %s (referenced by %s): add it", r.ns, ref.Name, ref.Key, e.Name)
			}
			out[e.Name] = v
		default:
			return nil, permanent(ReasonCredentialsInvalid, "%s uses a valueFrom the controller cannot read (only literal values, secretKeyRef and configMapKeyRef): use %s instead", e.Name, AnnotationAdminSecret)
		}
	}
	return out, nil
}

func isPermanent(err error) bool {
	_, ok := err.(*permanentError)
	return ok
}
