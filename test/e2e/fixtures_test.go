package e2e

import (
	"context"
	"fmt"
	"hash/fnv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/couchdb-controller/couchdb-controller/controller"
	"github.com/couchdb-controller/couchdb-controller/test/harness"
)

// clusterSpec describes one CouchDB StatefulSet as a user would write it.
type clusterSpec struct {
	name          string // StatefulSet name; the Service is the same name
	cluster       string // couchdb.io/cluster value
	replicas      int32
	parallel      bool // podManagementPolicy Parallel (the Helm chart's default)
	memberGate    bool // readinessGates couchdb.io/member
	helm          bool // Helm chart style: ERL_FLAGS -name couchdb, seedlist ini, publishNotReadyAddresses, credentials via env
	password      string
	annotations   map[string]string
	serviceLabels bool // label the Service (default true via newSpec)
	serviceLate   bool // create the Service after the StatefulSet
	userFromCM    bool // COUCHDB_USER from a ConfigMap (configMapKeyRef) instead of the Secret
	zones         bool // pods run on the zone Nodes (zone-a/b/c, by ordinal mod 3), not the default Node
}

// testZones are the zones of the suite's zone Nodes; pod i of a zones cluster runs in testZones[i%3].
var testZones = []string{"zone-a", "zone-b", "zone-c"}

// zonePoolKey labels and taints the zone Nodes, so only pods of zones clusters run there.
const zonePoolKey = "couchdb-e2e/zones"

func zoneNode(zone string) string { return zone + "-node" }

func newSpec(name string, replicas int32) clusterSpec {
	return clusterSpec{name: name, cluster: name, replicas: replicas, password: "e2e-" + name + "-pw-7731", serviceLabels: true}
}

var nsCounter atomic.Int32

// newNamespace makes a fresh namespace for one test (run).
func newNamespace(t *testing.T) string {
	t.Helper()
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(ns) > 50 {
		h := fnv.New32a()
		_, _ = h.Write([]byte(ns))
		ns = fmt.Sprintf("%s-%08x", strings.Trim(ns[:40], "-"), h.Sum32())
	}
	ns = fmt.Sprintf("%s-%d", strings.Trim(ns, "-"), nsCounter.Add(1))
	if err := harness.EnsureNamespace(context.Background(), env.kube, ns); err != nil {
		t.Fatal(err)
	}
	return ns
}

func (s clusterSpec) create(t *testing.T, ns string) {
	t.Helper()
	ctx := context.Background()
	passwords.Store(ns, s.password)
	usePassword(s.password)
	labels := map[string]string{controller.LabelCluster: s.cluster}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: s.name + "-admin", Namespace: ns},
		StringData: map[string]string{"adminUsername": "admin", "adminPassword": s.password, "erlangCookie": "cookie-" + s.name}}
	if _, err := env.kube.CoreV1().Secrets(ns).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svcLabels := map[string]string{"app": s.name}
	if s.serviceLabels {
		svcLabels[controller.LabelCluster] = s.cluster
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: ns, Labels: svcLabels},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Selector: map[string]string{"app": s.name},
			PublishNotReadyAddresses: s.helm,
			Ports:                    []corev1.ServicePort{{Name: "couchdb", Port: 5984, TargetPort: intstr.FromInt32(5984)}}},
	}
	createService := func() {
		if _, err := env.kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if !s.serviceLate {
		createService()
	}
	secretEnv := func(name, key string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: secret.Name}, Key: key}}}
	}
	ctr := corev1.Container{
		Name: "couchdb", Image: "couchdb:3.4.3",
		Ports: []corev1.ContainerPort{{Name: "couchdb", ContainerPort: 5984}},
		Env: []corev1.EnvVar{
			secretEnv("COUCHDB_USER", "adminUsername"), secretEnv("COUCHDB_PASSWORD", "adminPassword"),
			secretEnv("COUCHDB_ERLANG_COOKIE", "erlangCookie"),
			{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
		},
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/_up", Port: intstr.FromString("couchdb")}}},
	}
	podSpec := corev1.PodSpec{Containers: []corev1.Container{ctr}}
	if s.helm {
		// The chart: ERL_FLAGS "-name couchdb" (Erlang appends the pod FQDN) and a seedlist ini.
		podSpec.Containers[0].Env = append(podSpec.Containers[0].Env, corev1.EnvVar{Name: "ERL_FLAGS", Value: " -name couchdb "})
		var seeds []string
		for i := 0; i < int(min(s.replicas, 5)); i++ {
			seeds = append(seeds, fmt.Sprintf("couchdb@%s-%d.%s.%s.svc.cluster.local", s.name, i, s.name, ns))
		}
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: s.name + "-config", Namespace: ns},
			Data: map[string]string{"seedlistinifile": "[cluster]\nseedlist = " + strings.Join(seeds, ",") + "\n"}}
		if _, err := env.kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		podSpec.Volumes = []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name}}}}}
	} else {
		podSpec.Containers[0].Env = append(podSpec.Containers[0].Env,
			corev1.EnvVar{Name: "NODENAME", Value: fmt.Sprintf("$(POD_NAME).%s.$(POD_NAMESPACE).svc.cluster.local", s.name)})
	}
	if s.zones {
		podSpec.NodeSelector = map[string]string{zonePoolKey: "true"}
		podSpec.Tolerations = []corev1.Toleration{{Key: zonePoolKey, Operator: corev1.TolerationOpEqual, Value: "true", Effect: corev1.TaintEffectNoSchedule}}
	}
	if s.memberGate {
		podSpec.ReadinessGates = []corev1.PodReadinessGate{{ConditionType: controller.ConditionMember}}
	}
	annotations := map[string]string{}
	if !s.helm {
		annotations[controller.AnnotationAdminSecret] = secret.Name
	}
	for k, v := range s.annotations {
		annotations[k] = v
	}
	policy := appsv1.OrderedReadyPodManagement
	if s.parallel || s.helm {
		policy = appsv1.ParallelPodManagement
	}
	replicas := s.replicas
	sts := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: ns, Labels: labels, Annotations: annotations},
		Spec: appsv1.StatefulSetSpec{
			Replicas: &replicas, ServiceName: s.name, PodManagementPolicy: policy,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": s.name}},
			Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": s.name}}, Spec: podSpec},
		},
	}
	if s.userFromCM {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: s.name + "-user", Namespace: ns}, Data: map[string]string{"user": "admin"}}
		if _, err := env.kube.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		ctr := &sts.Spec.Template.Spec.Containers[0]
		ctr.Env[0] = corev1.EnvVar{Name: "COUCHDB_USER", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: cm.Name}, Key: "user"}}}
		delete(sts.Annotations, controller.AnnotationAdminSecret)
	}
	if _, err := env.kube.AppsV1().StatefulSets(ns).Create(ctx, sts, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if s.serviceLate {
		poll(t, 30*time.Second, "the controller to report the missing Service", func(context.Context) (bool, error) {
			return len(events(t, ns, controller.ReasonServiceNotLabelled)) > 0, nil
		})
		createService()
	}
}

// nodeName is the CouchDB node name of a pod of s.
func (s clusterSpec) nodeName(ns string, ordinal int) string {
	return fmt.Sprintf("couchdb@%s-%d.%s.%s.svc.cluster.local", s.name, ordinal, s.name, ns)
}
