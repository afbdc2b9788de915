package sphinx_test

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"

	"github.com/mixmta/mixmta/plugins/sphinx/internal/sphinx"
	"github.com/mixmta/mixmta/sdk/mixkey"
)

// A sender builds a 3-hop packet; each node unwraps it in turn, checks the
// replay tag, and forwards it, until the exit gets the payload.
func Example() {
	g := sphinx.DefaultGeometry()

	// Three mix nodes with their epoch keys; node ids are the SHA-256 of the
	// public key here (the format does not care how ids are made).
	keys := make(map[[32]byte]*mixkey.Key)
	var path []sphinx.Hop
	for range 3 {
		priv, _ := mixkey.Generate(rand.Reader)
		pub := priv.Public()
		id := sha256.Sum256(pub)
		keys[id] = priv
		path = append(path, sphinx.Hop{NodeID: id, MixKey: pub})
	}

	pkt, err := sphinx.NewPacket(g, path, sphinx.Exit, []byte("hello, mixnet"), rand.Reader)
	if err != nil {
		panic(err)
	}

	seen := make(map[[32]byte]bool) // per node and epoch key, persistent in real life
	at := path[0].NodeID
	for {
		res, err := sphinx.Unwrap(g, keys[at], pkt)
		if err != nil {
			fmt.Println("dropped:", err)
			return
		}
		if seen[res.ReplayTag] {
			fmt.Println("dropped: replay")
			return
		}
		seen[res.ReplayTag] = true
		switch res.Action {
		case sphinx.Forward:
			fmt.Println("forward,", len(res.Packet), "bytes")
			at, pkt = res.Next, res.Packet
		case sphinx.Exit:
			fmt.Printf("exit: %s\n", res.Payload)
			return
		case sphinx.Drop:
			fmt.Println("drop")
			return
		}
	}
	// Output:
	// forward, 65536 bytes
	// forward, 65536 bytes
	// exit: hello, mixnet
}
