package sphinx

import (
	"bytes"
	"encoding/hex"
	"os"
	"testing"
	"testing/cryptotest"
)

// The KEM format's test vector (SPEC.md §15.7). The packet is committed in
// testdata/kem-vector-1.bin: X-Wing encapsulation is randomized and the HPKE
// API takes no reader, so any implementation can check the processing side
// (each hop's output and replay tag from these bytes, with the test nodes'
// keys), and this one also rebuilds the same bytes under
// testing/cryptotest.SetGlobalRandom(t, 1).
var kemVector = struct {
	g       KEMGeometry
	nodes   []int // test nodes in path order
	payload string
	seed    string // detReader seed of the routing padding
	packet  string // SHA-256 of the packet
	hops    []string
	tags    []string
	pubs    []string // SHA-256 of test node k's X-Wing public key (= its node id)
}{
	g: KEMGeometry{PacketSize: 8192, MaxHops: 5}, nodes: []int{4, 3, 2, 1, 0}, payload: "small",
	seed:   "mixmta-sphinx-kem-v1 test vector 1",
	packet: "5e4f3255645e52bbb295f1db0fd9be4932eecda8d0016dd1e98e8d712b35502e",
	hops: []string{
		"56fbf8d2c2e750931aa9866ad97f7c98b67fd27ce923785457024ad69d293b73",
		"3284c89e2cc2d794436bde893780de24f9d2795c959558dbad95f78cb44dba12",
		"1f967c021896fa69ab5cc6bc8fd8b48eccf2d2c4dbbec00d7c78eb4cea85105d",
		"787aa585e0fe5cf2659a26d5366f48a02963d7e74c7deb552a8b17dd767269c6",
		"81db8ebbbbc69c6c6ad4a6aa92b76e0c08af547da236b9e2c9dbe1d8285a8130",
	},
	tags: []string{
		"6846a1e4ec2c8e04557eee3e85b8f18b767c6c921b6bb7568fd8eee488d08329",
		"0341535d9fe3381b75092d8813e44f89635dabcb21e1b851721de80b28671e95",
		"a67bfca238d23543468b85a98851fb24387de721868f5f9ea1fcd645c8f8b8d5",
		"4a9608d2326f4b4ca51f934e786ad0b7940ff84bc653b18f1c7bd130a0cda3e1",
		"45cc218e632332b11f3fec79e22c2864c5393d429021d7072321573f1df1d076",
	},
	pubs: []string{
		"87b7761daa8dc06f80b5cc3bf1bd141b062a9d26491962e26481a02b3b1bcf5f",
		"0c67f0bf704929cf30a56fb88b6e1312e84afd31d981633f881aac443ed624d2",
		"ac03d789128f83900c372db4642582ef460507b0e5c18d90f20d3eed9886f00a",
		"fa72fc635ea2d7bf163569e17f2b33ed3c7353e27d8639fd232b83318a06f74b",
		"e405da2813083e02e01fbacdd251833bdb592b1924fd75e4a40e259eaca5af25",
	},
}

const kemVectorFile = "testdata/kem-vector-1.bin"

func kemVectorPath(t *testing.T) []kemNode {
	nodes := makeKEMNodes(t, 5)
	for k, n := range nodes {
		if got := hex.EncodeToString(n.hop.NodeID[:]); got != kemVector.pubs[k] {
			t.Fatalf("test node %d: SHA-256 of its X-Wing public key %s, SPEC.md says %s", k, got, kemVector.pubs[k])
		}
	}
	var path []kemNode
	for _, i := range kemVector.nodes {
		path = append(path, nodes[i])
	}
	return path
}

// TestKEMVectorProcessing unwraps the committed packet hop by hop and checks
// every output and replay tag against SPEC.md §15.7.
func TestKEMVectorProcessing(t *testing.T) {
	pkt, err := os.ReadFile(kemVectorFile)
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256Hex(pkt); got != kemVector.packet {
		t.Fatalf("%s: SHA-256 %s, SPEC.md says %s", kemVectorFile, got, kemVector.packet)
	}
	_, res := kemTravel(t, kemVector.g, kemVectorPath(t), pkt)
	for i, r := range res {
		out := r.Packet
		if r.Action == Exit {
			out = r.Payload
			if string(out) != kemVector.payload {
				t.Fatalf("exit payload %q", out)
			}
		}
		if got := sha256Hex(out); got != kemVector.hops[i] {
			t.Errorf("hop %d output %s, want %s", i, got, kemVector.hops[i])
		}
		if got := hex.EncodeToString(r.ReplayTag[:]); got != kemVector.tags[i] {
			t.Errorf("hop %d replay tag %s, want %s", i, got, kemVector.tags[i])
		}
	}
}

// TestKEMVectorCreation rebuilds the committed packet: with Go's crypto
// randomness made deterministic, creation is reproducible byte for byte.
func TestKEMVectorCreation(t *testing.T) {
	cryptotest.SetGlobalRandom(t, 1)
	want, err := os.ReadFile(kemVectorFile)
	if err != nil {
		t.Fatal(err)
	}
	pkt, err := NewKEMPacket(kemVector.g, kemPath(kemVectorPath(t)), Exit, []byte(kemVector.payload), newDetReader(kemVector.seed))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(pkt, want) {
		t.Fatalf("creation changed: SHA-256 %s, the committed vector is %s", sha256Hex(pkt), kemVector.packet)
	}
}
