// Package pluginclient is the host's end of the plugin protocol: how the
// core (core/internal/pluginhost) and plugin tests (sdk/plugintest) launch
// a plugin binary and call its stage. The plugin's end is sdk.Serve; what
// both ends share is internal/wire. Plugin authors do not import it.
package pluginclient

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"

	"crypto/sha256"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/metadata"

	"github.com/mixmta/mixmta/internal/pb"
	"github.com/mixmta/mixmta/internal/wire"
	"github.com/mixmta/mixmta/sdk"
)

// Info is what a plugin reports about itself at start.
type Info struct {
	Name, Version, Doc string
	Kinds              []sdk.Kind
	Needs              sdk.Needs
	Schema             *sdk.Schema
	// Capabilities the plugin reports (e.g. CapSanitizes).
	Capabilities []sdk.Capability
}

// Can reports whether the plugin reports capability c.
func (i Info) Can(c sdk.Capability) bool {
	for _, x := range i.Capabilities {
		if x == c {
			return true
		}
	}
	return false
}

// Has reports whether the plugin implements kind k.
func (i Info) Has(k sdk.Kind) bool {
	for _, x := range i.Kinds {
		if x == k {
			return true
		}
	}
	return false
}

// LaunchOptions configure Launch.
type LaunchOptions struct {
	// Path of the plugin binary.
	Path string
	// SHA256, if set, is the expected hex SHA-256 of the binary; a mismatch
	// refuses to start it (go-plugin SecureConfig).
	SHA256 string
	// Logger receives the plugin's log lines (nil: discarded).
	Logger hclog.Logger
	// StartTimeout bounds launch and handshake (default 10 s).
	StartTimeout time.Duration
	// NoBatch makes every call a framed call of its own, as with a plugin
	// built with an SDK older than the batched Calls stream (benchmarks
	// compare the two).
	NoBatch bool
}

// TransportError wraps a failure of the RPC itself (plugin crashed, killed
// or unreachable), as opposed to an outcome the stage returned. The core
// restarts the plugin and retries the call.
type TransportError struct{ Err error }

func (e *TransportError) Error() string { return "plugin unreachable: " + e.Err.Error() }
func (e *TransportError) Unwrap() error { return e.Err }

// IsTransport reports whether err is a *TransportError.
func IsTransport(err error) bool {
	var t *TransportError
	return errors.As(err, &t)
}

// Client is a launched plugin process. Its methods are safe for concurrent
// use. Calls send only the message parts the plugin declared in sdk.Needs.
type Client struct {
	pc   *plugin.Client
	rpc  pb.StageClient
	info Info
	// calls is the batched call stream, nil if the plugin does not serve
	// it (an SDK older than it): then every call is a framed call.
	calls *batcher
	// region holds the bodies of batched calls, nil if the plugin did not
	// map it: then bodies travel inside the calls. The stage instances
	// of one process share it.
	region *bodyRegion
	// replies holds the large replies (Mix) to calls whose body is in
	// region, nil if the plugin did not map it: then they travel inside
	// the replies.
	replies *replyRegion
	// conn is the process's connection; instances tells whether the
	// plugin routes calls by stage instance (see Instance).
	conn      grpc.ClientConnInterface
	instances bool
}

// Launch starts the plugin binary, performs the versioned handshake, and
// reads its Info. The plugin gets no environment from the host but its log
// level, dies with the host (Pdeathsig SIGTERM plus the SDK's watchdog), and
// logs through o.Logger. Errors: binary missing or not executable, checksum
// mismatch, handshake or protocol-version failure, timeout.
func Launch(o LaunchOptions) (*Client, error) {
	logger := o.Logger
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	cmd := exec.Command(o.Path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	level := "info"
	switch {
	case logger.IsTrace():
		level = "trace"
	case logger.IsDebug():
		level = "debug"
	case logger.IsWarn() && !logger.IsInfo():
		level = "warn"
	}
	cmd.Env = []string{wire.LogLevelEnv + "=" + level}
	var region *bodyRegion
	var replies *replyRegion
	if !o.NoBatch {
		r, ro, err := newBodyRegion()
		if err != nil {
			return nil, fmt.Errorf("plugin %s: %w", o.Path, err)
		}
		defer ro.Close() // the plugin has its own copy once started
		region = r
		if replies, err = newReplyRegion(); err != nil {
			region.close()
			return nil, fmt.Errorf("plugin %s: %w", o.Path, err)
		}
		cmd.ExtraFiles = []*os.File{ro, replies.f}
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", wire.BodyRegionEnv, wire.RegionFD),
			fmt.Sprintf("%s=%d", wire.ReplyRegionEnv, wire.ReplyRegionFD))
	}
	fail := func(err error) (*Client, error) {
		if region != nil {
			region.close()
			replies.close()
		}
		return nil, err
	}
	cfg := &plugin.ClientConfig{
		HandshakeConfig:  wire.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{wire.ProtocolVersion: {"stage": &grpcPlugin{}}},
		Cmd:              cmd,
		SkipHostEnv:      true,
		AllowedProtocols: []plugin.Protocol{plugin.ProtocolGRPC},
		Logger:           logger,
		StartTimeout:     o.StartTimeout,
		SyncStdout:       io.Discard,
		SyncStderr:       io.Discard,
		GRPCDialOptions: []grpc.DialOption{grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(wire.MaxCallBytes), grpc.MaxCallSendMsgSize(wire.MaxCallBytes), grpc.ForceCodecV2(wire.Codec{})),
			grpc.WithInitialWindowSize(wire.FlowWindow), grpc.WithInitialConnWindowSize(wire.FlowWindow),
			grpc.WithReadBufferSize(wire.SocketBuffer), grpc.WithWriteBufferSize(wire.SocketBuffer),
			experimental.WithBufferPool(wire.BufPool)},
	}
	if cfg.StartTimeout == 0 {
		cfg.StartTimeout = 10 * time.Second
	}
	if o.SHA256 != "" {
		sum, err := hex.DecodeString(o.SHA256)
		if err != nil || len(sum) != sha256.Size {
			return fail(fmt.Errorf("plugin %s: sha256 must be 64 hex digits", o.Path))
		}
		cfg.SecureConfig = &plugin.SecureConfig{Checksum: sum, Hash: sha256.New()}
	}
	pc := plugin.NewClient(cfg)
	cp, err := pc.Client()
	if err != nil {
		pc.Kill()
		return fail(fmt.Errorf("plugin %s: %w", o.Path, err))
	}
	raw, err := cp.Dispense("stage")
	if err != nil {
		pc.Kill()
		return fail(fmt.Errorf("plugin %s: %w", o.Path, err))
	}
	conn := raw.(grpc.ClientConnInterface)
	c := &Client{pc: pc, rpc: pb.NewStageClient(conn), conn: conn}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.StartTimeout)
	defer cancel()
	var header metadata.MD
	ir, err := c.rpc.Info(ctx, &pb.InfoRequest{}, grpc.Header(&header))
	if err != nil {
		pc.Kill()
		return fail(fmt.Errorf("plugin %s: info: %w", o.Path, err))
	}
	c.instances = len(header.Get(wire.InstancesKey)) > 0
	c.info = Info{Name: ir.GetName(), Version: ir.GetVersion(), Doc: ir.GetDoc(), Needs: sdk.Needs(ir.GetNeeds())}
	for _, k := range ir.GetKinds() {
		c.info.Kinds = append(c.info.Kinds, sdk.Kind(k))
	}
	for _, k := range ir.GetCapabilities() {
		c.info.Capabilities = append(c.info.Capabilities, sdk.Capability(k))
	}
	c.info.Schema = new(sdk.Schema)
	if err := json.Unmarshal([]byte(ir.GetConfigSchema()), c.info.Schema); err != nil {
		pc.Kill()
		return fail(fmt.Errorf("plugin %s: bad config schema: %w", o.Path, err))
	}
	if ir.GetCalls() && !o.NoBatch {
		if c.calls, err = newBatcher(c.rpc); err != nil {
			pc.Kill()
			return fail(fmt.Errorf("plugin %s: calls: %w", o.Path, err))
		}
	}
	if region != nil && ir.GetBodyRegion() && c.calls != nil {
		c.region = region
	} else if region != nil {
		region.close()
	}
	if replies != nil && ir.GetReplyRegion() && c.region != nil {
		c.replies = replies
	} else if replies != nil {
		replies.close()
	}
	return c, nil
}

// Info returns what the plugin reported at launch.
func (c *Client) Info() Info { return c.info }

// Kill stops the plugin process (graceful, then SIGKILL after 2 s).
func (c *Client) Kill() {
	if c.calls != nil {
		c.calls.close()
	}
	c.pc.Kill()
	if c.region != nil {
		c.region.close()
	}
	if c.replies != nil {
		c.replies.close()
	}
}

// Batched reports how many calls and how many batches (round trips) c
// has sent on its Calls stream (0, 0 without one).
func (c *Client) Batched() (calls, batches int64) {
	if c.calls == nil {
		return 0, 0
	}
	return c.calls.callsSent.Load(), c.calls.batchesSent.Load()
}

// Exited reports whether the plugin process has exited.
func (c *Client) Exited() bool { return c.pc.Exited() }

// Pid returns the plugin's process id (0 if unknown).
func (c *Client) Pid() int {
	if rc := c.pc.ReattachConfig(); rc != nil {
		return rc.Pid
	}
	return 0
}

func transport(err error) error {
	if err == nil {
		return nil
	}
	return &TransportError{Err: err}
}

// Configure sends the stage's config block as JSON. A config error comes
// back as a *sdk.FieldError (naming the key) or an *sdk.Error.
func (c *Client) Configure(ctx context.Context, stage string, configJSON []byte) error {
	r, err := c.rpc.Configure(ctx, &pb.ConfigureRequest{Stage: stage, ConfigJson: configJSON})
	if err != nil {
		return transport(err)
	}
	if r.GetStatus().GetKind() == 0 {
		return nil
	}
	msg := errors.New(r.GetStatus().GetText())
	if r.GetField() != "" {
		return &sdk.FieldError{Field: r.GetField(), Err: msg}
	}
	return msg
}

// send writes m to s as frames, with the parts the plugin declared in
// sdk.Needs. A body given as OpenBody is streamed from its reader in bounded
// memory. Errors: a stream failure as a *TransportError, a failure to read
// the body as is.
func (c *Client) send(s wire.FrameSender, m *sdk.Message) error {
	meta := metaToPB(m, c.info.Needs&sdk.NeedHeader != 0, c.info.Needs.Body())
	var h []byte
	if c.info.Needs&sdk.NeedHeader != 0 {
		h = m.Header
	}
	var err error
	switch {
	case !c.info.Needs.Body():
		err = wire.SendMessage(s, meta, h, nil)
	case m.Body == nil && m.OpenBody != nil:
		var r io.Reader
		if r, err = m.OpenBody(); err != nil {
			return err
		}
		err = wire.SendStreamed(s, meta, h, r, m.BodyLen)
	default:
		err = wire.SendMessage(s, meta, h, m.Body)
	}
	var be *wire.BodyReadError
	if errors.As(err, &be) {
		return be.Err
	}
	return transport(err)
}

// Check runs a checker. nil accepts; an *sdk.Error rejects.
func (c *Client) Check(ctx context.Context, m *sdk.Message) error {
	if r, err := c.inline(ctx, wire.OpCheck, m); err != nil || r != nil {
		if err != nil {
			return err
		}
		return statusFromPB(r.GetStatus())
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.rpc.Check(ctx)
	if err != nil {
		return transport(err)
	}
	if err := c.send(s, m); err != nil {
		return err
	}
	r, err := s.CloseAndRecv()
	if err != nil {
		return transport(err)
	}
	return statusFromPB(r.GetStatus())
}

// Transform runs a transformer and returns its sdk.Change (never nil on success).
func (c *Client) Transform(ctx context.Context, m *sdk.Message) (*sdk.Change, error) {
	if r, err := c.inline(ctx, wire.OpTransform, m); err != nil || r != nil {
		if err != nil {
			return nil, err
		}
		if err := statusFromPB(r.GetStatus()); err != nil {
			return nil, err
		}
		return changeFromPB(r.GetMeta(), r.GetHeader(), r.GetBody())
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.rpc.Transform(ctx)
	if err != nil {
		return nil, transport(err)
	}
	meta, header, body, err := exchange(s, func() error { return c.send(s, m) })
	if err != nil {
		return nil, err
	}
	return changeFromPB(meta, header, body)
}

// changeFromPB is the sdk.Change a Transform reply describes (header and body
// are the caller's: decoding made them). Errors: a part whose length is
// not the one announced, as a *TransportError.
func changeFromPB(meta *pb.MessageMeta, header, body []byte) (*sdk.Change, error) {
	ch := &sdk.Change{}
	if meta.GetHeaderPresent() {
		if int64(len(header)) != meta.GetHeaderLen() {
			return nil, transport(errors.New("transform header length differs from the announced one"))
		}
		ch.Header = present(header)
	}
	if meta.GetBodyPresent() {
		if int64(len(body)) != meta.GetBodyLen() {
			return nil, transport(errors.New("transform body length differs from the announced one"))
		}
		ch.Body = present(body)
	}
	if meta.GetEnvelopeChanged() {
		from := meta.GetEnvelope().GetMailFrom()
		ch.MailFrom = &from
	}
	return ch, nil
}

// present is b, or an empty slice for a part that is present but empty
// (decoding gives nil for both).
func present(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// inline runs m as a batched call of op when the plugin serves the Calls
// stream and the parts it needs fit wire.InlineMax; it returns a nil reply when
// the call must be a framed call instead (too large, or the plugin's reply
// would not fit a batch). A body given as OpenBody is read whole (it is at
// most wire.InlineMax). Errors: reading the body, as is; the stream, as a
// *TransportError.
func (c *Client) inline(ctx context.Context, op int32, m *sdk.Message) (*pb.Reply, error) {
	if c.calls == nil {
		return nil, nil
	}
	sendH, sendB := c.info.Needs&sdk.NeedHeader != 0, c.info.Needs.Body()
	var n int64
	if sendH {
		n += int64(len(m.Header))
	}
	if sendB {
		if m.Body != nil {
			n += int64(len(m.Body))
		} else if m.OpenBody != nil {
			n += m.BodyLen
		}
	}
	if n > wire.InlineMax {
		return nil, nil
	}
	call := &pb.Call{Op: op, Meta: metaToPB(m, sendH, sendB)}
	if sendH {
		call.Header = m.Header
	}
	var release func()
	if bodyLen := call.Meta.GetBodyLen(); sendB && bodyLen > 0 && c.region != nil {
		if slot, ok := c.region.take(); ok {
			if err := c.region.write(slot, m.Body, m.OpenBody, bodyLen); err != nil {
				c.region.release(slot)
				return nil, err
			}
			call.BodySlot = slot + 1
			release = func() { c.region.release(slot) }
		}
	}
	if sendB && call.BodySlot == 0 {
		switch {
		case m.Body != nil:
			call.Body = m.Body
		case m.OpenBody != nil:
			r, err := m.OpenBody()
			if err != nil {
				return nil, err
			}
			call.Body = make([]byte, m.BodyLen)
			if _, err := io.ReadFull(r, call.Body); err != nil {
				return nil, err
			}
		}
	}
	r, err := c.calls.do(ctx, call, release)
	if err != nil || r.GetStatus().GetKind() == wire.StatusPerCall {
		return nil, err
	}
	return r, nil
}

// messageStream is a bidirectional stream of MessageFrames (Transform,
// Assemble).
type messageStream interface {
	wire.FrameSender
	wire.FrameReceiver
	CloseSend() error
}

// exchange sends one framed message on s with send and reads the framed
// reply, whose first frame carries the stage's status: a stage error is
// returned as is, a stream failure as a *TransportError.
func exchange(s messageStream, send func() error) (*pb.MessageMeta, []byte, []byte, error) {
	if err := send(); err != nil {
		return nil, nil, nil, err
	}
	if err := s.CloseSend(); err != nil {
		return nil, nil, nil, transport(err)
	}
	first, err := s.Recv()
	if err != nil {
		return nil, nil, nil, transport(err)
	}
	if err := statusFromPB(first.GetStatus()); err != nil {
		return nil, nil, nil, err
	}
	m, h, b, err := wire.RecvMessage(&prepended{first: first, r: s}, wire.MaxCallBytes*1024)
	if err != nil {
		return nil, nil, nil, transport(err)
	}
	return m, h, b, nil
}

type prepended struct {
	first *pb.MessageFrame
	r     wire.FrameReceiver
}

func (p *prepended) Recv() (*pb.MessageFrame, error) {
	if f := p.first; f != nil {
		p.first = nil
		return f, nil
	}
	return p.r.Recv()
}

// sdk.Route runs a router.
func (c *Client) Route(ctx context.Context, m *sdk.Message) ([]sdk.Route, error) {
	if r, err := c.inline(ctx, wire.OpRoute, m); err != nil || r != nil {
		if err != nil {
			return nil, err
		}
		if err := statusFromPB(r.GetStatus()); err != nil {
			return nil, err
		}
		routes := make([]sdk.Route, 0, len(r.GetRoutes()))
		for _, x := range r.GetRoutes() {
			rm := x.GetRoute()
			rt := sdk.Route{RcptTo: rm.GetRcptTo(), Deliverer: rm.GetDeliverer()}
			copy(rt.NextHop[:], rm.GetNextHop())
			if rm.GetBodyPresent() {
				if int64(len(x.GetBody())) != rm.GetBodyLen() {
					return nil, transport(errors.New("route body length differs from the announced one"))
				}
				rt.Body = present(x.GetBody())
			}
			routes = append(routes, rt)
		}
		return routes, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.rpc.Route(ctx)
	if err != nil {
		return nil, transport(err)
	}
	if err := c.send(s, m); err != nil {
		return nil, err
	}
	if err := s.CloseSend(); err != nil {
		return nil, transport(err)
	}
	var routes []sdk.Route
	var want int64
	for {
		f, err := s.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, transport(err)
		}
		if err := statusFromPB(f.GetStatus()); err != nil {
			return nil, err
		}
		if rm := f.GetRoute(); rm != nil {
			r := sdk.Route{RcptTo: rm.GetRcptTo(), Deliverer: rm.GetDeliverer()}
			copy(r.NextHop[:], rm.GetNextHop())
			want = 0
			if rm.GetBodyPresent() {
				want = rm.GetBodyLen()
				r.Body = make([]byte, 0, want)
			}
			routes = append(routes, r)
		} else if len(routes) == 0 {
			return nil, transport(errors.New("route body before route"))
		}
		cur := &routes[len(routes)-1]
		cur.Body = append(cur.Body, f.GetBody()...)
		if int64(len(cur.Body)) > want {
			return nil, transport(errors.New("route body exceeds announced length"))
		}
	}
	return routes, nil
}

// Delay asks a delayer for req.Count delays.
func (c *Client) Delay(ctx context.Context, req sdk.DelayRequest) ([]time.Duration, error) {
	dr := &pb.DelayRequest{Envelope: envelopeToPB(req.Envelope), Size: req.Size, Count: int32(max(req.Count, 1))}
	var status *pb.Status
	var delays []int64
	if c.calls != nil {
		r, err := c.calls.do(ctx, &pb.Call{Op: wire.OpDelay, Delay: dr}, nil)
		if err != nil {
			return nil, err
		}
		status, delays = r.GetStatus(), r.GetDelaysNs()
	} else {
		r, err := c.rpc.Delay(ctx, dr)
		if err != nil {
			return nil, transport(err)
		}
		status, delays = r.GetStatus(), r.GetDelaysNs()
	}
	if err := statusFromPB(status); err != nil {
		return nil, err
	}
	out := make([]time.Duration, len(delays))
	for i, d := range delays {
		out[i] = time.Duration(d)
	}
	return out, nil
}

// Deliver runs a deliverer. Recipients without a result should be retried.
func (c *Client) Deliver(ctx context.Context, m *sdk.Message) ([]sdk.RcptResult, error) {
	var status *pb.Status
	var results []*pb.RcptResult
	if r, err := c.inline(ctx, wire.OpDeliver, m); err != nil {
		return nil, err
	} else if r != nil {
		status, results = r.GetStatus(), r.GetResults()
	} else {
		r, err := c.deliverFramed(ctx, m)
		if err != nil {
			return nil, err
		}
		status, results = r.GetStatus(), r.GetResults()
	}
	out := make([]sdk.RcptResult, 0, len(results))
	for _, x := range results {
		out = append(out, sdk.RcptResult{Rcpt: x.GetRcpt(), Err: statusFromPB(x.GetStatus()), Relay: x.GetRelay()})
	}
	return out, statusFromPB(status)
}

func (c *Client) deliverFramed(ctx context.Context, m *sdk.Message) (*pb.DeliverReply, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.rpc.Deliver(ctx)
	if err != nil {
		return nil, transport(err)
	}
	if err := c.send(s, m); err != nil {
		return nil, err
	}
	r, err := s.CloseAndRecv()
	if err != nil {
		return nil, transport(err)
	}
	return r, nil
}

// SetMixState runs a mixer's SetMixState.
func (c *Client) SetMixState(ctx context.Context, st sdk.MixState) error {
	req := &pb.MixState{Epoch: st.Epoch, Keys: keysToPB(st.Keys), Self: st.Self[:], KeyDir: st.KeyDir}
	for _, n := range st.Nodes {
		req.Nodes = append(req.Nodes, &pb.DirectoryNode{Id: append([]byte(nil), n.ID[:]...), Name: n.Name, Exit: n.Exit, Healthy: n.Healthy, Keys: keysToPB(n.Keys), Capabilities: n.Capabilities})
	}
	s, err := c.rpc.SetMixState(ctx, req)
	if err != nil {
		return transport(err)
	}
	return statusFromPB(s)
}

// Mix runs a mixer on one packet, as a batched call: concurrent calls
// share round trips; the packet goes through the body region and a
// forward packet or exit fragment comes back through the reply region
// (each inline when the plugin mapped no region or no slot is free). The
// result refers to no memory of packet. Errors: the stage's, as
// *sdk.Error; the stream broke or the reply is malformed, as a
// *TransportError; a plugin without the call stream.
func (c *Client) Mix(ctx context.Context, packet []byte) (*sdk.MixResult, error) {
	if c.calls == nil {
		return nil, errors.New("pluginclient: the plugin serves no call stream (Mix is only a batched call)")
	}
	call := &pb.Call{Op: wire.OpMix, Meta: &pb.MessageMeta{BodyPresent: true, BodyLen: int64(len(packet))}}
	slot := int32(-1)
	var release func()
	if c.region != nil && len(packet) > 0 && len(packet) <= wire.InlineMax {
		if s, ok := c.region.take(); ok {
			if err := c.region.write(s, packet, nil, int64(len(packet))); err != nil {
				c.region.release(s)
				return nil, transport(err)
			}
			slot, call.BodySlot = s, s+1
			release = func() { c.region.release(s) }
		}
	}
	if call.BodySlot == 0 {
		// The caller may reuse packet once Mix returns, even when it gave
		// up before the batch holding this call was sent.
		call.Body = bytes.Clone(packet)
	}
	r, err := c.calls.doHeld(ctx, call, release)
	if err != nil {
		return nil, err
	}
	if release != nil {
		defer release()
	}
	if err := statusFromPB(r.GetStatus()); err != nil {
		return nil, err
	}
	mr := r.GetMix()
	if mr == nil {
		return nil, transport(errors.New("mix reply without outcome"))
	}
	out := &sdk.MixResult{Action: sdk.MixAction(mr.GetAction()), Packet: mr.GetPacket(), Epoch: mr.GetEpoch()}
	copy(out.NextHop[:], mr.GetNextHop())
	copy(out.ReplayTag[:], mr.GetReplayTag())
	copy(out.LoopID[:], mr.GetLoopId())
	data := mr.GetFragmentData()
	if ds := r.GetDataSlot(); ds != 0 {
		if c.replies == nil || ds != call.BodySlot {
			return nil, transport(fmt.Errorf("mix reply in reply slot %d for a call in slot %d", ds, call.BodySlot))
		}
		b, err := c.replies.read(slot, r.GetDataLen())
		if err != nil {
			return nil, transport(err)
		}
		if out.Action == sdk.MixForward {
			out.Packet = b
		} else {
			data = b
		}
	}
	if mr.GetFragmentCount() > 0 {
		f := &sdk.Fragment{Index: int(mr.GetFragmentIndex()), Count: int(mr.GetFragmentCount()), Data: data}
		copy(f.MessageID[:], mr.GetFragmentMessageId())
		out.Fragment = f
	}
	return out, nil
}

// Cover asks a mixer for one cover packet.
func (c *Client) Cover(ctx context.Context, k sdk.CoverKind) (*sdk.Packet, error) {
	r, err := c.rpc.Cover(ctx, &pb.CoverRequest{Kind: int32(k)})
	if err != nil {
		return nil, transport(err)
	}
	if err := statusFromPB(r.GetStatus()); err != nil {
		return nil, err
	}
	p := &sdk.Packet{Data: r.GetPacket()}
	copy(p.NextHop[:], r.GetNextHop())
	copy(p.LoopID[:], r.GetLoopId())
	for _, b := range r.GetPath() {
		var id sdk.NodeID
		copy(id[:], b)
		p.Path = append(p.Path, id)
	}
	return p, nil
}

// Assemble asks a mixer to parse a reassembled message.
func (c *Client) Assemble(ctx context.Context, data []byte) (*sdk.Message, error) {
	s, err := c.rpc.Assemble(ctx)
	if err != nil {
		return nil, transport(err)
	}
	meta, header, body, err := exchange(s, func() error {
		return transport(wire.SendMessage(s, &pb.MessageMeta{BodyPresent: true, BodyLen: int64(len(data))}, nil, data))
	})
	if err != nil {
		return nil, err
	}
	return &sdk.Message{Envelope: envelopeFromPB(meta.GetEnvelope()), Header: header, Body: body, Size: int64(len(header) + len(body))}, nil
}

// grpcPlugin is the host's go-plugin glue: it gets the plugin's
// connection, on which each stage instance makes its own pb.StageClient
// (the plugin's side is in sdk.Serve).
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
}

func (*grpcPlugin) GRPCServer(*plugin.GRPCBroker, *grpc.Server) error {
	return errors.New("the host serves no plugin")
}

func (*grpcPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return c, nil
}
