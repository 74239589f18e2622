package kubelet

import (
	"fmt"
	"net/netip"
	"testing"
)

func TestIPAMStableAndUnique(t *testing.T) {
	p := newIPAM()
	seen := map[string]string{}
	for i := range 3000 {
		key := fmt.Sprintf("ns%d/db-%d", i%7, i)
		ip, err := p.assign(key)
		if err != nil {
			t.Fatal(err)
		}
		addr := netip.MustParseAddr(ip)
		if !podCIDR.Contains(addr) || addr.String() == hostIP || addr == podCIDR.Addr() || ip == "10.244.255.255" {
			t.Fatalf("%s got unusable address %s", key, ip)
		}
		if other, dup := seen[ip]; dup {
			t.Fatalf("%s and %s share %s", key, other, ip)
		}
		seen[ip] = key
		if again, _ := p.assign(key); again != ip {
			t.Fatalf("%s: %s then %s", key, ip, again)
		}
	}
	// A fresh allocator picks the same first choice: addresses survive a Kubelet restart.
	q := newIPAM()
	if a, b := p.lookup("ns0/db-0"), must(q.assign("ns0/db-0")); a != b {
		t.Fatalf("restart moved ns0/db-0 from %s to %s", a, b)
	}
}

func TestIPAMExhaustion(t *testing.T) {
	p := newIPAMSize(50)
	for i := range 50 {
		if _, err := p.assign(fmt.Sprint(i)); err != nil {
			t.Fatalf("assignment %d: %v", i, err)
		}
	}
	if ip, err := p.assign("one-too-many"); err == nil {
		t.Fatalf("got %s from a full network", ip)
	}
}

func must(s string, err error) string {
	if err != nil {
		panic(err)
	}
	return s
}

func TestAddrAt(t *testing.T) {
	for off, want := range map[uint32]string{1: "10.244.0.1", 255: "10.244.0.255", 256: "10.244.1.0", usable: "10.244.255.253"} {
		if got := addrAt(off); got != want {
			t.Errorf("addrAt(%d) = %s, want %s", off, got, want)
		}
	}
	if addrAt(usable+1) != hostIP {
		t.Errorf("the host IP is not right after the pod range")
	}
}
