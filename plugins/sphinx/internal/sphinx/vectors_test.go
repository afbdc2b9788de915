package sphinx

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

// Test vectors of SPEC.md §12. Any change to the format (layout, labels,
// padding, arithmetic) changes these hashes and fails this test; a
// deliberate change must update SPEC.md and bump the label version.
type vector struct {
	name    string
	g       Geometry
	nodes   []int // indices of the test nodes of helpers_test.go, in path order
	final   Command
	payload string
	seed    string // detReader seed
	// Expected values (hex). packet: SHA-256 of the created packet. hops[i]:
	// SHA-256 of the packet hop i forwards, or of the exit payload, or ""
	// for a drop. tags[i]: hop i's replay tag.
	packet string
	hops   []string
	tags   []string
	// full: the whole created packet in hex (small geometry only).
	full string
}

var vectors = []vector{
	{
		name: "3 hops, exit, default geometry", g: DefaultGeometry(), nodes: []int{0, 1, 2}, final: Exit,
		payload: "mixmta sphinx test vector 1", seed: "mixmta-sphinx-v1 test vector 1",
		packet: "2b3ff32e8d133ebf3f330718b100fbcc1b4c329d4702ad064c95b00d74811f5c",
		hops:   []string{"29661c127ad8ad5493e686d9ab769661f89bb7c3616bb6c0a63d50d3e39630b9", "3701bfd1f5dbad3520510653f6905ef77861309204faaf0cc08fdeb1224a39d7", "5879801d1785537e6e3d2f77d03cf7bd84a83ff5d77c071ab134f7e38f2ca4b3"},
		tags:   []string{"ee6a00e261e8f515d36eb1cde540b7e25fbbdf0332f00bfc7dfc94263d06c756", "a61d308d7743a84d38418783c34d2f3a9e250be7d63f7b319196f3ce55c6fb78", "e52abf95d6d034d77caf737c6089507eea3e1e739e0caecfdd3b2013f8f8552a"},
	},
	{
		name: "1 hop, exit, default geometry", g: DefaultGeometry(), nodes: []int{0}, final: Exit,
		payload: "", seed: "mixmta-sphinx-v1 test vector 2",
		packet: "81382ebc1276e2ccc6398b194303382cb1d8572ccca538880e8783a18ff847f1",
		hops:   []string{"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		tags:   []string{"400f7e952f5ee5a774d24f9ebaad1dfb5ee60369b177cb5b9c452c012fdcb3d1"},
	},
	{
		name: "2 hops, drop, default geometry", g: DefaultGeometry(), nodes: []int{1, 2}, final: Drop,
		payload: "", seed: "mixmta-sphinx-v1 test vector 3",
		packet: "111b2584a206d687b4ab15c57e61574be1f0cff0edb148aadfabe314300a63c6",
		hops:   []string{"a474f364e192d83b76fb8ce473b813cca322417cd356295bba184b23868f655f", ""},
		tags:   []string{"9d391c63cd27aeea22cea1993766c2841e0c2d9b2745487748d4729ee6e384e3", "7f8ef519069fc1c9b2b9c84754d95697fe9eeec1d33274afc1810358abdc4b5f"},
	},
	{
		name: "5 hops, exit, 512-byte packets", g: Geometry{PacketSize: 512, MaxHops: 5}, nodes: []int{4, 3, 2, 1, 0}, final: Exit,
		payload: "small", seed: "mixmta-sphinx-v1 test vector 4",
		packet: "86ae4ccacd012844921a9ffc3be8e5a6fa4aecbf02d71f1fdaf27c13068dce45",
		hops:   []string{"8184e5fdab9a4f010ca12ebaa5b32c250f3eb3e3dc820c15fead705698962ae6", "ec020b9f78894df67b5e806c7a410b9d59c26e8121e6b8f7569252e8a1b02343", "5d36bcffc07e3f559afeb4d5f597419b4c43abecfce17249c81c9e5de5ceab7d", "b211e417b4b26db2160d09d5737dee9ecaa84e386f1994c3c76968fba9bad5f3", "81db8ebbbbc69c6c6ad4a6aa92b76e0c08af547da236b9e2c9dbe1d8285a8130"},
		tags:   []string{"903bc67729067c1f431996b1321bb919c430f44046d7e3ae92bc4feeb84c54a9", "0f86028861bb1de66cfaae6248db6a0b87bfcafdf2702232e237cf56dc4b53b3", "49afef521feb6efc461583e4cd8a1295bed7a6e4847a4ad78212603233cae2cf", "f9cb1c1589295a7c7ef474f1c49829bb4ed25a5598b97e7b521edc8f7ea52dd4", "3da2afcf7bc428e64e456a595a190b676693e8b5b6cfa4705e268c060296140b"},
		full:   "b7d2c0c83a147ed203660e915f12e1e44fb9e2565c84124d67039d2cc227ea7a6d1e898caace01190564db729275e1deb22fc073b777500463f9347271a27268eba0fe06fc1c7cc7718a417e6c4db4f972c04dec494edb911551f1a735a5be2dbfe070905ade2e07ff63d61897c543289e9ebb7beac0edff39d903ad133cec0fcac5f4e83327ae96ab97a26a17ff0db5e81347cb09d82a635e36a60ca5cbfdce7d14714ccc79421fc5836538a3fd90296b48411c527e1480a2fc38390343b8b87679e3a12cd5af85458718d7e4f5d2ab5dcbf07e65417543d2d8bddd570a3e57b7f3e17505953122f0a054348edf694bed91374a15ae1d2bd01fbc573e575e2ab4888f206da9cf3d8ed42f3bffdea369d12ba9fabc55a2387cfbae29ff1b58c41a5b77d77803db22c66e33e7c056af917b222f5ba4581821ac8879989912782c29389e2da92067f5aaeba76304f47436a285c117245d79f4c17a58dbc58806ab4b89a608ad752ac90dd51767767f3b4e4b3f231f11d5d25a8bb7efaa0a1de1333f61bf46821a0e6e3afaf0c63c21c41d095910f11f212fa028b66253e9245b93d681684b87a1ee6c780e067603af674c1e9fcec9d4d1f80d911822c069116b3eef532952ef811fb9bb28612a63189828441f1073915a0b135f90a7cf8d87b68af9dd7fe008169bd02c540da7d1771d0cd2e52a3c51b6d94b5d50d71a61c9466c",
	},
}

// vectorNodes are the test nodes' X25519 public keys and node ids (SPEC.md
// §12.2).
var vectorNodes = []struct{ pub, id string }{
	{"97948e86256813cfef8dbbcce3e93d5499732cb57af99dc7397c2e503fb86461", "ec16074b6bea88bd2ff9fa182c60f96c214b7bf41c6707e9ca9c91cbc65884c8"},
	{"62e6b9571b15e5f6093b4db9707d5b6f12901c44fd160e9d114643ac375fa878", "7e6fbf6a12fd5827230afb974ad249a64f277f02a96ae013f54cdaf4a5ee1c55"},
	{"52eaa6b30c8c83a6f925498587a9aa8fec4f554780f9a16aa5a1b9bd6b3ea131", "a4c312905ddb5274f7ba12c0e6c3f5177bdf8c9aaab2a4d58d673c9a495c6952"},
	{"e5a05c543fc889c5672bdd1f83cd39afefb8e71319feb5df0b0ef7d97600e957", "6e8f1d0907d0a371ddf32829d54ec7e401db74c272b60914d110e5faf8bbbd4c"},
	{"6bc6186e8d55130a419991a89dc69daddeab688d8b531fd054a48b027ac54a22", "34c02a3137cacfe2d5fbf6b15cd9b5fae7c283884e985d3e160894958f63ba0d"},
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestVectors(t *testing.T) {
	spec, err := os.ReadFile("../../SPEC.md")
	if err != nil {
		t.Fatalf("reading SPEC.md: %v", err)
	}
	specText := strings.Join(strings.Fields(string(spec)), "")
	all := makeNodes(t, MaxHopsLimit)
	for i, n := range all {
		pub, id := hex.EncodeToString(n.hop.MixKey), hex.EncodeToString(n.hop.NodeID[:])
		if pub != vectorNodes[i].pub || id != vectorNodes[i].id {
			t.Fatalf("test node %d: key derivation changed: pub %s id %s", i, pub, id)
		}
		if !strings.Contains(specText, pub) || !strings.Contains(specText, id) {
			t.Errorf("SPEC.md does not list test node %d", i)
		}
	}
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			var nodes []testNode
			for _, i := range v.nodes {
				nodes = append(nodes, all[i])
			}
			pkt, err := NewPacket(v.g, pathOf(nodes), v.final, []byte(v.payload), newDetReader(v.seed))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			gotPacket := sha256Hex(pkt)
			tr := travel(t, v.g, nodes, pkt)
			var gotHops, gotTags []string
			for _, res := range tr.results {
				switch res.Action {
				case Forward:
					gotHops = append(gotHops, sha256Hex(res.Packet))
				case Exit:
					gotHops = append(gotHops, sha256Hex(res.Payload))
					if string(res.Payload) != v.payload {
						t.Fatalf("exit payload %q, want %q", res.Payload, v.payload)
					}
				case Drop:
					gotHops = append(gotHops, "")
				}
				gotTags = append(gotTags, hex.EncodeToString(res.ReplayTag[:]))
			}
			got = append(got, "packet "+gotPacket)
			for i := range gotHops {
				got = append(got, "hop "+gotHops[i]+" tag "+gotTags[i])
			}
			mismatch := gotPacket != v.packet || strings.Join(gotHops, ",") != strings.Join(v.hops, ",") ||
				strings.Join(gotTags, ",") != strings.Join(v.tags, ",")
			if v.full != "" && hex.EncodeToString(pkt) != v.full {
				mismatch = true
			}
			if mismatch {
				t.Errorf("vector changed; got:\n%s", strings.Join(got, "\n"))
				if v.g.PacketSize <= 1024 {
					t.Logf("full packet: %x", pkt)
				}
			}
			// SPEC.md must publish the same values.
			for _, want := range append(append([]string{v.packet, v.full}, v.hops...), v.tags...) {
				if want != "" && !strings.Contains(specText, want) {
					t.Errorf("SPEC.md does not contain %s", want)
				}
			}
		})
	}
}
