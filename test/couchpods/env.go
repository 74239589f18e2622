package couchpods

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// containerEnv resolves a container's environment the way the kubelet does for the variables the
// official CouchDB image reads: envFrom first, then env in order, literal values with $(VAR) expansion,
// secretKeyRef, configMapKeyRef and the downward API fields a StatefulSet pod template uses.
// Each Secret and ConfigMap is read once per container, however many variables name it: a real
// kubelet serves them from a watch-fed cache, and one GET per variable was a fifth of the API
// server's requests while the bench formed 1,000 clusters.
func containerEnv(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod, c *corev1.Container) (map[string]string, error) {
	env := map[string]string{}
	src := &envSources{ctx: ctx, kc: kc, ns: pod.Namespace}
	for _, from := range c.EnvFrom {
		switch {
		case from.SecretRef != nil:
			s, err := src.secret(from.SecretRef.Name)
			if err != nil {
				if isOptional(from.SecretRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom secret %s: %w", from.SecretRef.Name, err)
			}
			for k, v := range s.Data {
				env[from.Prefix+k] = string(v)
			}
		case from.ConfigMapRef != nil:
			cm, err := src.configMap(from.ConfigMapRef.Name)
			if err != nil {
				if isOptional(from.ConfigMapRef.Optional) {
					continue
				}
				return nil, fmt.Errorf("envFrom configmap %s: %w", from.ConfigMapRef.Name, err)
			}
			for k, v := range cm.Data {
				env[from.Prefix+k] = v
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = expand(e.Value, env)
			continue
		}
		v, ok, err := valueFrom(src, pod, e.ValueFrom)
		if err != nil {
			return nil, fmt.Errorf("env %s: %w", e.Name, err)
		}
		if ok {
			env[e.Name] = v
		}
	}
	return env, nil
}

// envSources reads the Secrets and ConfigMaps of one container's environment, each once.
type envSources struct {
	ctx        context.Context
	kc         kubernetes.Interface
	ns         string
	secrets    map[string]sourceRead[*corev1.Secret]
	configMaps map[string]sourceRead[*corev1.ConfigMap]
}

type sourceRead[T any] struct {
	obj T
	err error
}

func (e *envSources) secret(name string) (*corev1.Secret, error) {
	return readOnce(&e.secrets, name, func() (*corev1.Secret, error) {
		return e.kc.CoreV1().Secrets(e.ns).Get(e.ctx, name, metav1.GetOptions{})
	})
}

func (e *envSources) configMap(name string) (*corev1.ConfigMap, error) {
	return readOnce(&e.configMaps, name, func() (*corev1.ConfigMap, error) {
		return e.kc.CoreV1().ConfigMaps(e.ns).Get(e.ctx, name, metav1.GetOptions{})
	})
}

func readOnce[T any](seen *map[string]sourceRead[T], name string, get func() (T, error)) (T, error) {
	if r, ok := (*seen)[name]; ok {
		return r.obj, r.err
	}
	if *seen == nil {
		*seen = map[string]sourceRead[T]{}
	}
	obj, err := get()
	(*seen)[name] = sourceRead[T]{obj, err}
	return obj, err
}

func valueFrom(from *envSources, pod *corev1.Pod, src *corev1.EnvVarSource) (string, bool, error) {
	switch {
	case src.FieldRef != nil:
		switch src.FieldRef.FieldPath {
		case "metadata.name":
			return pod.Name, true, nil
		case "metadata.namespace":
			return pod.Namespace, true, nil
		case "status.podIP":
			return pod.Status.PodIP, true, nil
		case "spec.nodeName":
			return pod.Spec.NodeName, true, nil
		}
		return "", false, nil
	case src.SecretKeyRef != nil:
		s, err := from.secret(src.SecretKeyRef.Name)
		if err != nil {
			if isOptional(src.SecretKeyRef.Optional) {
				return "", false, nil
			}
			return "", false, err
		}
		v, ok := s.Data[src.SecretKeyRef.Key]
		if !ok && !isOptional(src.SecretKeyRef.Optional) {
			return "", false, fmt.Errorf("secret %s has no key %s", src.SecretKeyRef.Name, src.SecretKeyRef.Key)
		}
		return string(v), ok, nil
	case src.ConfigMapKeyRef != nil:
		cm, err := from.configMap(src.ConfigMapKeyRef.Name)
		if err != nil {
			if isOptional(src.ConfigMapKeyRef.Optional) {
				return "", false, nil
			}
			return "", false, err
		}
		v, ok := cm.Data[src.ConfigMapKeyRef.Key]
		if !ok && !isOptional(src.ConfigMapKeyRef.Optional) {
			return "", false, fmt.Errorf("configmap %s has no key %s", src.ConfigMapKeyRef.Name, src.ConfigMapKeyRef.Key)
		}
		return v, ok, nil
	}
	return "", false, nil
}

func isOptional(b *bool) bool { return b != nil && *b }

var refPattern = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// expand replaces $(VAR) with earlier variables, as the kubelet does; unknown references stay as written.
func expand(s string, env map[string]string) string {
	return refPattern.ReplaceAllStringFunc(s, func(m string) string {
		name := m[2 : len(m)-1]
		if v, ok := env[name]; ok {
			return v
		}
		return m
	})
}

// erlangName derives the node name the CouchDB VM would take, following the official image's
// entrypoint (NODENAME -> -name couchdb@NODENAME) and Erlang's own rule for ERL_FLAGS "-name X" without a
// host part (the pod's fully qualified name). Without either, the VM is not distributed.
func erlangName(pod *corev1.Pod, env map[string]string) string {
	if flags := env["ERL_FLAGS"]; flags != "" {
		f := strings.Fields(flags)
		for i := 0; i+1 < len(f); i++ {
			if f[i] == "-name" {
				name := f[i+1]
				if !strings.Contains(name, "@") {
					name += "@" + podFQDN(pod)
				}
				return name
			}
		}
	}
	if n := env["NODENAME"]; n != "" {
		return "couchdb@" + n
	}
	return "nonode@nohost"
}

func podFQDN(pod *corev1.Pod) string {
	host := pod.Spec.Hostname
	if host == "" {
		host = pod.Name
	}
	if pod.Spec.Subdomain == "" {
		return host
	}
	return fmt.Sprintf("%s.%s.%s.svc.cluster.local", host, pod.Spec.Subdomain, pod.Namespace)
}

// erlangCookie reads the cookie the way the image and the Helm chart pass it.
func erlangCookie(env map[string]string) string {
	if c := env["COUCHDB_ERLANG_COOKIE"]; c != "" {
		return c
	}
	f := strings.Fields(env["ERL_FLAGS"])
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-setcookie" {
			return f[i+1]
		}
	}
	return ""
}
