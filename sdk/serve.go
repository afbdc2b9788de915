package sdk

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/go-plugin"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/experimental"

	"github.com/mixmta/mixmta/internal/pb"
	"github.com/mixmta/mixmta/internal/wire"
)

// Env is what a plugin's New function gets besides its config.
type Env struct {
	// Stage is the stage's name in the pipeline file.
	Stage string
	// Logger writes through the core's logger. Addresses and content only at
	// Debug or Trace.
	Logger hclog.Logger
}

// Plugin describes a plugin binary for Serve. C is its config struct: the
// value in Config holds the defaults, its fields' tags define the schema
// (see SchemaOf), and if *C implements Validator it is called after decoding.
type Plugin[C any] struct {
	Name    string
	Version string
	// Doc is one line on what the plugin does (shown by `mixmta plugins`).
	Doc string
	// Kinds are the stage kinds the value returned by New implements.
	Kinds []Kind
	// Needs are the message parts the stage receives.
	Needs Needs
	// Capabilities are promises the stage keeps (e.g. CapSanitizes); the
	// core checks pipeline order with them.
	Capabilities []Capability
	Config       C
	// New builds the stage from a decoded, validated config. It returns a
	// value implementing every interface in Kinds.
	New func(cfg C, env Env) (any, error)
}

// Serve runs p as a plugin until the core closes the connection or dies. It
// never returns. Nothing may be written to stdout before it is called.
func Serve[C any](p Plugin[C]) {
	level := hclog.LevelFromString(os.Getenv(wire.LogLevelEnv))
	if level == hclog.NoLevel {
		level = hclog.Info
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: p.Name, Level: level, JSONFormat: true, Output: os.Stderr})
	if os.Getenv(wire.Handshake.MagicCookieKey) != wire.Handshake.MagicCookieValue {
		fmt.Fprintf(os.Stderr, "%s is a mixmta plugin: name it in a pipeline file and start `mixmta serve`\n", p.Name)
		os.Exit(1)
	}
	watchParent(logger)
	paceRuntime()
	if err := mapBodyRegion(); err != nil {
		// Not fatal: the core then sends bodies inside the calls.
		logger.Warn("body region not mapped", "error", err)
	}
	if err := mapReplyRegion(); err != nil {
		// Not fatal: large replies then travel inside the replies.
		logger.Warn("reply region not mapped", "error", err)
	}
	srv := newInstances(p, logger, mustJSON(SchemaOf(p.Config)))
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig:  wire.Handshake,
		VersionedPlugins: map[int]plugin.PluginSet{wire.ProtocolVersion: {"stage": &grpcPlugin{register: srv.register}}},
		GRPCServer: func(opts []grpc.ServerOption) *grpc.Server {
			return grpc.NewServer(append(opts, grpc.MaxRecvMsgSize(wire.MaxCallBytes), grpc.MaxSendMsgSize(wire.MaxCallBytes),
				grpc.InitialWindowSize(wire.FlowWindow), grpc.InitialConnWindowSize(wire.FlowWindow),
				grpc.ReadBufferSize(wire.SocketBuffer), grpc.WriteBufferSize(wire.SocketBuffer),
				experimental.BufferPool(wire.BufPool), grpc.ForceServerCodecV2(wire.Codec{}))...)
		},
		Logger: logger,
	})
	os.Exit(0)
}

// pluginGCPercent is a plugin's GOGC while it is busy (see paceGC;
// idleGCPercent otherwise). A stage's live heap is small (a
// few MiB) while every call with a body allocates its copy (64 KiB and
// more), so at Go's default of 100 the collector runs every few dozen
// calls: measured with 32 callers of 64 KiB messages on 2 cores
// (BenchmarkStageCallLoaded), 400 cuts the plugin's CPU per call from
// ~100 µs to ~45 µs, for a heap of at most five times the live one
// (16 MiB at least).
const pluginGCPercent = 400

// paceRuntime sets the plugin's GOGC (paced by its allocation rate) and
// GOMAXPROCS unless its environment does (the core starts plugins with a
// clean environment, so normally it does not). GOMAXPROCS is half the
// runtime's default (the CPUs, or a container's CPU limit, which NumCPU
// ignores), at least one: a plugin shares the machine with the core, which
// does most of the work, and idle Ps of its own only spin looking for
// work (on 2 CPUs, 1 P cut the plugin's CPU per 64 KiB call by a further
// ~20 %).
func paceRuntime() {
	if os.Getenv("GOGC") == "" {
		paceGC()
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(max(1, runtime.GOMAXPROCS(0)/2))
	}
}

// watchParent makes the plugin die with the core: Pdeathsig (Linux), and a
// watchdog that exits when the parent changes (the core was killed and the
// plugin re-parented), in case the signal is missed. A SIGTERM while the
// core lives is ignored: it is the one systemd or a shell sends to the
// whole process group, and the core, which got it too, stops its plugins
// itself once in-flight calls are done (an early exit would fail them).
func watchParent(logger hclog.Logger) {
	ppid := os.Getppid()
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	_ = unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0)
	if os.Getppid() != ppid || ppid == 1 {
		os.Exit(1)
	}
	go func() {
		for range term {
			if os.Getppid() != ppid {
				os.Exit(1)
			}
			logger.Debug("SIGTERM ignored: the core stops this plugin")
		}
	}()
	go func() {
		for range time.Tick(500 * time.Millisecond) {
			if os.Getppid() != ppid {
				logger.Warn("core process is gone, exiting")
				os.Exit(1)
			}
		}
	}()
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// grpcPlugin is the plugin's go-plugin glue: it registers the stage
// service, routed to stage instances (the host's side is in
// internal/pluginclient).
type grpcPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	register func(*grpc.Server)
}

func (g *grpcPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	g.register(s)
	return nil
}

func (g *grpcPlugin) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, errors.New("a plugin dials no plugin")
}

type stageServer[C any] struct {
	pb.UnimplementedStageServer
	p      Plugin[C]
	logger hclog.Logger
	schema string
	stage  atomic.Value // holds any: the configured stage value
}

func (s *stageServer[C]) Info(context.Context, *pb.InfoRequest) (*pb.InfoReply, error) {
	kinds := make([]string, len(s.p.Kinds))
	for i, k := range s.p.Kinds {
		kinds[i] = string(k)
	}
	caps := make([]string, len(s.p.Capabilities))
	for i, c := range s.p.Capabilities {
		caps[i] = string(c)
	}
	return &pb.InfoReply{Name: s.p.Name, Version: s.p.Version, Kinds: kinds, Needs: uint32(s.p.Needs), ConfigSchema: s.schema, Doc: s.p.Doc, Capabilities: caps, Calls: true, BodyRegion: pluginRegion != nil, ReplyRegion: pluginReplies != nil}, nil
}

// DecodeConfig decodes a JSON config block into a copy of defaults, strictly
// (unknown keys are errors), and runs Validate if the config implements
// Validator. It is what Configure does; plugin tests may call it directly.
func DecodeConfig[C any](defaults C, raw []byte) (C, error) {
	cfg := defaults
	// Round-trip the defaults so slices and maps in cfg are not shared.
	if b, err := json.Marshal(defaults); err == nil {
		var fresh C
		if json.Unmarshal(b, &fresh) == nil {
			cfg = fresh
		}
	}
	if len(bytes.TrimSpace(raw)) > 0 && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return cfg, err
		}
	}
	if v, ok := any(&cfg).(Validator); ok {
		if err := v.Validate(); err != nil {
			return cfg, err
		}
	}
	return cfg, nil
}

func (s *stageServer[C]) Configure(_ context.Context, req *pb.ConfigureRequest) (*pb.ConfigureReply, error) {
	fail := func(err error) (*pb.ConfigureReply, error) {
		r := &pb.ConfigureReply{Status: &pb.Status{Kind: 2, SmtpCode: 554, EnhancedCode: "5.3.5", Text: err.Error()}}
		var fe *FieldError
		if errors.As(err, &fe) {
			r.Field, r.Status.Text = fe.Field, fe.Err.Error()
		}
		return r, nil
	}
	cfg, err := DecodeConfig(s.p.Config, req.GetConfigJson())
	if err != nil {
		return fail(err)
	}
	v, err := s.p.New(cfg, Env{Stage: req.GetStage(), Logger: s.logger.Named(req.GetStage())})
	if err != nil {
		return fail(err)
	}
	for _, k := range s.p.Kinds {
		if !implements(v, k) {
			return fail(fmt.Errorf("plugin bug: stage value %T does not implement %s", v, k))
		}
	}
	s.stage.Store(&v)
	return &pb.ConfigureReply{Status: &pb.Status{}}, nil
}

func implements(v any, k Kind) bool {
	var ok bool
	switch k {
	case KindChecker:
		_, ok = v.(Checker)
	case KindTransformer:
		_, ok = v.(Transformer)
	case KindRouter:
		_, ok = v.(Router)
	case KindDelayer:
		_, ok = v.(Delayer)
	case KindDeliverer:
		_, ok = v.(Deliverer)
	case KindMixer:
		_, ok = v.(Mixer)
	}
	return ok
}

var errNotConfigured = &Error{Temporary: true, Code: 451, Enhanced: "3.5", Message: "stage not configured"}

func stageAs[T any, C any](s *stageServer[C], k Kind) (T, error) {
	var zero T
	p, _ := s.stage.Load().(*any)
	if p == nil {
		return zero, errNotConfigured
	}
	if !slices.Contains(s.p.Kinds, k) {
		return zero, Permanent(554, "3.5", "stage kind %s not implemented by %s", k, s.p.Name)
	}
	return (*p).(T), nil
}

// recv reads the message of a Check or Deliver call: in memory, or, for a
// stage that declared NeedBodyStream, header in memory and the body as a
// stream (done drains what the stage left unread, so the reply follows the
// whole request).
func (s *stageServer[C]) recv(stream wire.FrameReceiver) (m *Message, done func(), err error) {
	if s.p.Needs&NeedBodyStream == 0 {
		meta, h, b, err := wire.RecvMessage(stream, wire.MaxCallBytes*1024)
		if err != nil {
			return nil, nil, err
		}
		return messageFromPB(meta, h, b), func() {}, nil
	}
	meta, h, body, err := wire.RecvStreamed(stream, wire.MaxCallBytes*1024)
	if err != nil {
		return nil, nil, err
	}
	m = messageFromPB(meta, h, nil)
	if meta.GetBodyPresent() {
		m.BodyLen = meta.GetBodyLen()
		var opened atomic.Bool
		m.OpenBody = func() (io.Reader, error) {
			if opened.Swap(true) {
				return nil, errors.New("sdk: the body stream was already opened (it can be read once)")
			}
			return body, nil
		}
	}
	return m, func() { _, _ = io.Copy(io.Discard, body) }, nil
}

func (s *stageServer[C]) Check(stream pb.Stage_CheckServer) error {
	m, done, err := s.recv(stream)
	if err != nil {
		return err
	}
	c, err := stageAs[Checker](s, KindChecker)
	if err == nil {
		err = c.Check(stream.Context(), m)
	}
	done()
	return stream.SendAndClose(&pb.CheckReply{Status: statusToPB(err)})
}

func (s *stageServer[C]) Transform(stream pb.Stage_TransformServer) error {
	meta, h, b, err := wire.RecvMessage(stream, wire.MaxCallBytes*1024)
	if err != nil {
		return err
	}
	t, err := stageAs[Transformer](s, KindTransformer)
	var ch *Change
	if err == nil {
		ch, err = t.Transform(stream.Context(), messageFromPB(meta, h, b))
	}
	if err != nil {
		return stream.Send(&pb.MessageFrame{Meta: &pb.MessageMeta{Id: meta.GetId()}, Status: statusToPB(err)})
	}
	out := changeToPB(meta.GetId(), ch)
	if ch != nil {
		return wire.SendMessage(stream, out, ch.Header, ch.Body)
	}
	return stream.Send(&pb.MessageFrame{Meta: out})
}

func (s *stageServer[C]) Route(stream pb.Stage_RouteServer) error {
	meta, h, b, err := wire.RecvMessage(stream, wire.MaxCallBytes*1024)
	if err != nil {
		return err
	}
	r, err := stageAs[Router](s, KindRouter)
	var routes []Route
	if err == nil {
		routes, err = r.Route(stream.Context(), messageFromPB(meta, h, b))
	}
	if err != nil {
		return stream.Send(&pb.RouteFrame{Status: statusToPB(err)})
	}
	for _, rt := range routes {
		first := &pb.RouteFrame{Route: routeMetaToPB(rt)}
		body := rt.Body
		n := min(len(body), wire.FrameSize)
		first.Body, body = body[:n], body[n:]
		if err := stream.Send(first); err != nil {
			return err
		}
		for len(body) > 0 {
			n := min(len(body), wire.FrameSize)
			if err := stream.Send(&pb.RouteFrame{Body: body[:n]}); err != nil {
				return err
			}
			body = body[n:]
		}
	}
	return nil
}

func (s *stageServer[C]) Delay(ctx context.Context, req *pb.DelayRequest) (*pb.DelayReply, error) {
	d, err := stageAs[Delayer](s, KindDelayer)
	if err != nil {
		return &pb.DelayReply{Status: statusToPB(err)}, nil
	}
	n := max(int(req.GetCount()), 1)
	ds, err := d.Delay(ctx, DelayRequest{Envelope: envelopeFromPB(req.GetEnvelope()), Size: req.GetSize(), Count: n})
	if err == nil && len(ds) != n {
		err = fmt.Errorf("plugin bug: %d delays returned for %d asked", len(ds), n)
	}
	if err != nil {
		return &pb.DelayReply{Status: statusToPB(err)}, nil
	}
	out := make([]int64, n)
	for i, v := range ds {
		out[i] = int64(max(v, 0))
	}
	return &pb.DelayReply{Status: &pb.Status{}, DelaysNs: out}, nil
}

func (s *stageServer[C]) Deliver(stream pb.Stage_DeliverServer) error {
	m, done, err := s.recv(stream)
	if err != nil {
		return err
	}
	d, err := stageAs[Deliverer](s, KindDeliverer)
	var res []RcptResult
	if err == nil {
		res, err = d.Deliver(stream.Context(), m)
	}
	done()
	reply := &pb.DeliverReply{Status: statusToPB(err)}
	for _, r := range res {
		reply.Results = append(reply.Results, &pb.RcptResult{Rcpt: r.Rcpt, Status: statusToPB(r.Err), Relay: r.Relay})
	}
	return stream.SendAndClose(reply)
}

func (s *stageServer[C]) SetMixState(ctx context.Context, req *pb.MixState) (*pb.Status, error) {
	m, err := stageAs[Mixer](s, KindMixer)
	if err == nil {
		st := MixState{Epoch: req.GetEpoch(), Keys: keysFromPB(req.GetKeys()), KeyDir: req.GetKeyDir()}
		copy(st.Self[:], req.GetSelf())
		for _, n := range req.GetNodes() {
			dn := DirectoryNode{Name: n.GetName(), Exit: n.GetExit(), Healthy: n.GetHealthy(), Keys: keysFromPB(n.GetKeys()), Capabilities: n.GetCapabilities()}
			copy(dn.ID[:], n.GetId())
			st.Nodes = append(st.Nodes, dn)
		}
		err = m.SetMixState(ctx, st)
	}
	return statusToPB(err), nil
}

func (s *stageServer[C]) Cover(ctx context.Context, req *pb.CoverRequest) (*pb.CoverReply, error) {
	m, err := stageAs[Mixer](s, KindMixer)
	var p *Packet
	if err == nil {
		p, err = m.Cover(ctx, CoverKind(req.GetKind()))
	}
	if err != nil {
		return &pb.CoverReply{Status: statusToPB(err)}, nil
	}
	out := &pb.CoverReply{Status: &pb.Status{}, NextHop: p.NextHop[:], Packet: p.Data}
	if p.LoopID != ([16]byte{}) {
		out.LoopId = p.LoopID[:]
	}
	for _, n := range p.Path {
		out.Path = append(out.Path, append([]byte(nil), n[:]...))
	}
	return out, nil
}

func (s *stageServer[C]) Assemble(stream pb.Stage_AssembleServer) error {
	meta, _, data, err := wire.RecvMessage(stream, wire.MaxCallBytes*1024)
	if err != nil {
		return err
	}
	m, err := stageAs[Mixer](s, KindMixer)
	var msg *Message
	if err == nil {
		msg, err = m.Assemble(stream.Context(), data)
	}
	if err != nil {
		return stream.Send(&pb.MessageFrame{Meta: &pb.MessageMeta{Id: meta.GetId()}, Status: statusToPB(err)})
	}
	out := &pb.MessageMeta{Id: meta.GetId(), Envelope: envelopeToPB(msg.Envelope), EnvelopeChanged: true,
		HeaderPresent: true, HeaderLen: int64(len(msg.Header)), BodyPresent: true, BodyLen: int64(len(msg.Body))}
	return wire.SendMessage(stream, out, msg.Header, msg.Body)
}

func keysFromPB(ks []*pb.EpochKey) []EpochKey {
	out := make([]EpochKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, EpochKey{Epoch: k.GetEpoch(), Public: k.GetPublicKey(),
			NotBefore: time.Unix(k.GetNotBeforeUnix(), 0), NotAfter: time.Unix(k.GetNotAfterUnix(), 0)})
	}
	return out
}
