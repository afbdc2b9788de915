package wire

// The batched call protocol (the Calls stream of stage.proto): one stream
// per plugin carries every Check, Transform, Route, Delay and Deliver call
// whose message fits InlineMax, and every Mix call (a mix node's unwrap of
// one packet: the packet in the body region, a large result in the reply
// region). Setting up a gRPC stream per call costs more than the call
// itself (a stream's HEADERS, its flow-control window, two goroutine
// hand-offs on each side); on one long-lived stream a call is one entry in
// a batch, and under load one round trip carries as many calls as are
// pending.

// Call operations (pb.Call.op).
const (
	OpCheck     = 1
	OpTransform = 2
	OpRoute     = 3
	OpDelay     = 4
	OpDeliver   = 5
	OpCancel    = 6
	OpMix       = 7
)

// StatusPerCall is the Status kind of a reply too large for a batch: the
// host repeats the call as a framed call.
const StatusPerCall = 3

// InlineMax is the largest message (the header and body a stage gets, in
// bytes) that travels inside a batched call (256 KiB); a larger one takes
// a framed call of its own, streamed in bounded memory.
const InlineMax = 256 << 10

// MaxBatchBytes bounds the message bytes in one CallBatch or ReplyBatch
// (4 MiB), far below MaxCallBytes.
const MaxBatchBytes = 4 << 20

// MaxBatchCalls bounds the calls or replies in one batch.
const MaxBatchCalls = 256
