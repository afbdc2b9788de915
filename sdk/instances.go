package sdk

import (
	"context"
	"slices"
	"sync"

	"github.com/hashicorp/go-hclog"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/mixmta/mixmta/internal/pb"
	"github.com/mixmta/mixmta/internal/wire"
)

// instances are the stages one plugin process serves: the core starts one
// process per plugin binary and configures in it one instance per
// pipeline stage that names the binary, each made by the plugin's New
// with its own config. Every RPC names its instance in its metadata
// (wire.InstanceKey); a call naming none goes to instance "", so a host
// that runs one stage per process needs no change. A plugin author sees
// nothing of this: New is called once per stage, as it always was, and
// the values it returns must not share mutable state through package
// variables (two stages of one binary now live in one address space).
type instances[C any] struct {
	p      Plugin[C]
	logger hclog.Logger
	schema string

	mu   sync.Mutex
	byID map[string]*stageServer[C]
	// none answers Info (it is the binary's, not an instance's).
	none *stageServer[C]
}

func newInstances[C any](p Plugin[C], logger hclog.Logger, schema string) *instances[C] {
	return &instances[C]{p: p, logger: logger, schema: schema, byID: map[string]*stageServer[C]{},
		none: &stageServer[C]{p: p, logger: logger, schema: schema}}
}

// pick returns the instance an RPC names, made (not configured) if it is
// new, up to wire.MaxInstances. Info, the same for every instance, also
// tells the host in its header that this plugin routes calls by instance.
func (in *instances[C]) pick(ctx context.Context, method string) (*stageServer[C], error) {
	id := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get(wire.InstanceKey); len(v) > 0 {
			id = v[0]
		}
	}
	if method == "Info" {
		_ = grpc.SetHeader(ctx, metadata.Pairs(wire.InstancesKey, "1"))
		return in.none, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if s := in.byID[id]; s != nil {
		return s, nil
	}
	// Made by any method, not only Configure: a Calls stream is bound to
	// its instance when it opens, which may be before Configure.
	if len(in.byID) >= wire.MaxInstances {
		return nil, status.Errorf(codes.ResourceExhausted, "%s: more than %d stage instances in one process", in.p.Name, wire.MaxInstances)
	}
	s := &stageServer[C]{p: in.p, logger: in.logger, schema: in.schema}
	in.byID[id] = s
	return s, nil
}

// register adds the Stage service to srv with every handler routed to
// the instance its call names: the generated handlers, each given the
// picked instance as its server.
func (in *instances[C]) register(srv *grpc.Server) {
	d := pb.Stage_ServiceDesc
	d.Methods = slices.Clone(d.Methods)
	for i, m := range d.Methods {
		name, h := m.MethodName, m.Handler
		d.Methods[i].Handler = func(_ any, ctx context.Context, dec func(any) error, ic grpc.UnaryServerInterceptor) (any, error) {
			s, err := in.pick(ctx, name)
			if err != nil {
				return nil, err
			}
			return h(s, ctx, dec, ic)
		}
	}
	d.Streams = slices.Clone(d.Streams)
	for i, st := range d.Streams {
		name, h := st.StreamName, st.Handler
		d.Streams[i].Handler = func(_ any, stream grpc.ServerStream) error {
			s, err := in.pick(stream.Context(), name)
			if err != nil {
				return err
			}
			return h(s, stream)
		}
	}
	srv.RegisterService(&d, in.none)
}
