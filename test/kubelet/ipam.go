package kubelet

import (
	"fmt"
	"hash/fnv"
	"net/netip"
)

// podCIDR is where pod addresses come from. Endpoints refuse loopback addresses, so pods need real-looking
// ones; nothing ever dials them (the AddressMap translates them to loopback listeners).
var podCIDR = netip.MustParsePrefix("10.244.0.0/16")

// hostIP is the fake Node's address, the last usable address of podCIDR (never dialled either).
const hostIP = "10.244.255.254"

// ipam gives every pod name (namespace/name) one address for the life of the Kubelet, so a StatefulSet
// pod that is deleted and recreated comes back at the same IP, as it would on a CNI with sticky
// addresses. The first choice is a hash of the name, so addresses are also stable across Kubelet
// restarts unless two names collide. Not safe for concurrent use; the Kubelet holds its lock.
type ipam struct {
	byKey map[string]string
	byIP  map[string]string
}

func newIPAM() *ipam { return &ipam{byKey: map[string]string{}, byIP: map[string]string{}} }

// usable is the number of host addresses: .0.0 (network), the host IP and .255.255 are left out.
const usable = 1<<16 - 3

func (p *ipam) assign(key string) (string, error) {
	if ip, ok := p.byKey[key]; ok {
		return ip, nil
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	start := h.Sum32() % usable
	base := podCIDR.Addr().As4()
	for i := uint32(0); i < usable; i++ {
		off := (start+i)%usable + 1 // 1 .. 65533: never .0.0, .255.254 or .255.255
		a := base
		a[2], a[3] = byte(off>>8), byte(off)
		ip := netip.AddrFrom4(a).String()
		if _, taken := p.byIP[ip]; !taken {
			p.byKey[key], p.byIP[ip] = ip, key
			return ip, nil
		}
	}
	return "", fmt.Errorf("pod network %s is exhausted", podCIDR)
}

func (p *ipam) lookup(key string) string { return p.byKey[key] }
