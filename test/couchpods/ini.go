package couchpods

import (
	"bufio"
	"context"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// iniConfig collects the [section] key = value pairs of every ini file the pod mounts from a
// ConfigMap, which is how the Helm chart hands CouchDB its seedlist and [cluster] settings.
func iniConfig(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	for _, v := range pod.Spec.Volumes {
		if v.ConfigMap == nil {
			continue
		}
		cm, err := kc.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, v.ConfigMap.Name, metav1.GetOptions{})
		if err != nil {
			if isOptional(v.ConfigMap.Optional) {
				continue
			}
			return nil, err
		}
		for key, body := range cm.Data {
			if strings.HasSuffix(key, ".ini") || strings.HasSuffix(key, "inifile") {
				parseINI(body, out)
			}
		}
	}
	return out, nil
}

func parseINI(body string, out map[string]map[string]string) {
	section := ""
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, ";") || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.TrimSpace(line[1 : len(line)-1])
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				continue
			}
			if out[section] == nil {
				out[section] = map[string]string{}
			}
			out[section][strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
}
