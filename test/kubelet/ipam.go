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
	size  uint32 // addresses handed out: offsets 1..size of podCIDR
	byKey map[string]string
	byIP  map[string]string
}

func newIPAM() *ipam { return newIPAMSize(usable) }

func newIPAMSize(size uint32) *ipam {
	return &ipam{size: min(size, usable), byKey: map[string]string{}, byIP: map[string]string{}}
}

// usable is the number of host addresses: .0.0 (network), the host IP and .255.255 are left out.
const usable = 1<<16 - 3

func (p *ipam) assign(key string) (string, error) {
	if ip, ok := p.byKey[key]; ok {
		return ip, nil
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	start := h.Sum32() % p.size
	for i := range p.size {
		ip := addrAt((start+i)%p.size + 1) // offsets 1 .. 65533 at most: never .0.0, .255.254 or .255.255
		if _, taken := p.byIP[ip]; !taken {
			p.byKey[key], p.byIP[ip] = ip, key
			return ip, nil
		}
	}
	return "", fmt.Errorf("pod network %s is exhausted", podCIDR)
}

// addrAt is the address at offset off (< 65536) of podCIDR.
func addrAt(off uint32) string {
	a := podCIDR.Addr().As4()
	a[2], a[3] = byte(off>>8), byte(off)
	return netip.AddrFrom4(a).String()
}

func (p *ipam) lookup(key string) string { return p.byKey[key] }
