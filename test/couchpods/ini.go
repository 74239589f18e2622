package couchpods

import (
	"bufio"
	"context"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// iniConfig collects the [section] key = value pairs of the ini files the pod gets from ConfigMaps,
// which is how the Helm chart hands CouchDB its seedlist, uuid and [cluster] settings.
//
// A ConfigMap volume that some container mounts with subPath or subPathExpr gives only the files
// those mounts name: with subPathExpr: $(POD_NAME).ini each pod of a StatefulSet reads its own file,
// which is how a pod spec can give pods different values. Any other ConfigMap volume gives every
// key ending in .ini (or "inifile", the chart's name), whether the couchdb container mounts it or an
// init container copies it into place as the chart does. Whole volumes are read first, then the
// per-pod files, each in name order, and a later value wins, as CouchDB reads local.d.
func iniConfig(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod) (map[string]map[string]string, error) {
	out := map[string]map[string]string{}
	picked, err := subPathFiles(ctx, kc, pod)
	if err != nil {
		return nil, err
	}
	var perPod []string
	perPodBody := map[string]string{}
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
		// The files the volume holds: its items' paths, or its keys.
		files := map[string]string{}
		if len(v.ConfigMap.Items) > 0 {
			for _, it := range v.ConfigMap.Items {
				if body, ok := cm.Data[it.Key]; ok {
					files[it.Path] = body
				}
			}
		} else {
			for k, body := range cm.Data {
				files[k] = body
			}
		}
		if paths, ok := picked[v.Name]; ok {
			for _, p := range paths {
				if body, ok := files[p]; ok {
					perPod = append(perPod, p)
					perPodBody[p] = body
				}
			}
			continue
		}
		names := make([]string, 0, len(files))
		for k := range files {
			if strings.HasSuffix(k, ".ini") || strings.HasSuffix(k, "inifile") {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		for _, k := range names {
			parseINI(files[k], out)
		}
	}
	sort.Strings(perPod)
	for _, p := range perPod {
		parseINI(perPodBody[p], out)
	}
	return out, nil
}

// subPathFiles lists, by volume, the files mounted with subPath or subPathExpr (expanded with the
// mounting container's environment, as the kubelet does).
func subPathFiles(ctx context.Context, kc kubernetes.Interface, pod *corev1.Pod) (map[string][]string, error) {
	out := map[string][]string{}
	containers := append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...)
	for i := range containers {
		c := &containers[i]
		var env map[string]string
		for _, m := range c.VolumeMounts {
			switch {
			case m.SubPath != "":
				out[m.Name] = append(out[m.Name], m.SubPath)
			case m.SubPathExpr != "":
				if env == nil {
					var err error
					if env, err = containerEnv(ctx, kc, pod, c); err != nil {
						return nil, err
					}
				}
				out[m.Name] = append(out[m.Name], expand(m.SubPathExpr, env))
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
