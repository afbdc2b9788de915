package directory

import (
	"fmt"
	"testing"
	"time"

	"github.com/mixmta/mixmta/core/internal/mixnet/nodes"
)

// BenchmarkConsensusVerify: verifying a consensus of 100 and 1,000 nodes
// signed by 3 authorities, as every node does once per epoch; the size of
// the document is reported as bytes/doc.
func BenchmarkConsensusVerify(b *testing.B) {
	now := time.Now()
	ta, as := testAuthorities(b, 3)
	for _, n := range []int{100, 1000} {
		descs := make([]*nodes.Descriptor, n)
		for i := range descs {
			descs[i] = memNode(b, fmt.Sprintf("n%d", i), now, testEpoch)
		}
		data := encode(b, signedConsensus(b, ta, 3, now, descs...))
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			for b.Loop() {
				if _, err := VerifyConsensus(data, as, 0, now); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(len(data)), "bytes/doc")
		})
	}
}
