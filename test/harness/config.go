package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// AdminConfig is a rest.Config with cluster-admin rights (a token in group system:masters). Each call
// returns a fresh copy.
func (cp *ControlPlane) AdminConfig() *rest.Config { return cp.config(cp.adminToken) }

// Kubeconfig is the path of an admin kubeconfig in RunDir, for kubectl or a controller process.
func (cp *ControlPlane) Kubeconfig() string { return cp.kubeconfig }

func (cp *ControlPlane) config(token string) *rest.Config {
	return &rest.Config{
		Host:            cp.url,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: cp.pki.caPEM},
		QPS:             100,
		Burst:           200,
		WarningHandler:  quietWarnings{rest.NewWarningWriter(os.Stderr, rest.WarningWriterOptions{Deduplicate: true})},
	}
}

// endpointsDeprecated is the warning kube-apiserver (v1.33+) attaches to every v1 Endpoints request.
const endpointsDeprecated = "v1 Endpoints is deprecated"

// quietWarnings drops the Endpoints deprecation warning, which would otherwise be printed for every
// request an Endpoints informer makes, and passes other warnings on (once each).
type quietWarnings struct{ next rest.WarningHandler }

func (q quietWarnings) HandleWarningHeader(code int, agent, text string) {
	if strings.Contains(text, endpointsDeprecated) {
		return
	}
	q.next.HandleWarningHeader(code, agent, text)
}

func (cp *ControlPlane) kubeconfigFor(user, token string) clientcmdapi.Config {
	return clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"harness": {Server: cp.url, CertificateAuthorityData: cp.pki.caPEM}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{user: {Token: token}},
		Contexts:       map[string]*clientcmdapi.Context{"harness": {Cluster: "harness", AuthInfo: user}},
		CurrentContext: "harness",
	}
}

// saTokenSeconds is how long ServiceAccount tokens last: longer than any test run.
const saTokenSeconds = 6 * 3600

func (cp *ControlPlane) serviceAccountToken(ctx context.Context, ns, name string) (string, error) {
	kc, err := kubernetes.NewForConfig(cp.AdminConfig())
	if err != nil {
		return "", err
	}
	exp := int64(saTokenSeconds)
	tr, err := kc.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("request a token for ServiceAccount %s/%s: %w", ns, name, err)
	}
	return tr.Status.Token, nil
}

// ServiceAccountConfig returns a rest.Config that authenticates as ServiceAccount ns/name (a
// TokenRequest token valid for 6 hours), so tests run the controller with exactly the RBAC it ships
// with. The ServiceAccount must exist.
func (cp *ControlPlane) ServiceAccountConfig(ctx context.Context, ns, name string) (*rest.Config, error) {
	token, err := cp.serviceAccountToken(ctx, ns, name)
	if err != nil {
		return nil, err
	}
	return cp.config(token), nil
}

// ServiceAccountKubeconfig is ServiceAccountConfig as a kubeconfig file in RunDir, for a controller
// run as a separate process. It returns the file's path.
func (cp *ControlPlane) ServiceAccountKubeconfig(ctx context.Context, ns, name string) (string, error) {
	token, err := cp.serviceAccountToken(ctx, ns, name)
	if err != nil {
		return "", err
	}
	path := filepath.Join(cp.runDir, fmt.Sprintf("sa-%s-%s.kubeconfig", ns, name))
	if err := clientcmd.WriteToFile(cp.kubeconfigFor("system:serviceaccount:"+ns+":"+name, token), path); err != nil {
		return "", err
	}
	return path, nil
}

// EnsureNamespace creates ns unless it exists.
func EnsureNamespace(ctx context.Context, kc kubernetes.Interface, ns string) error {
	_, err := kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return nil
}
