package pluginclient

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/mixmta/mixmta/internal/pb"
	"github.com/mixmta/mixmta/internal/wire"
)

// ErrNoInstances: the plugin serves one stage per process (it was built
// with an SDK that does not route calls by stage instance).
var ErrNoInstances = errors.New("pluginclient: the plugin serves one stage per process")

// Instances reports whether the plugin process serves several stage
// instances (see Instance).
func (c *Client) Instances() bool { return c.instances }

// Instance returns a client for stage instance id in c's process: every
// call it makes names id in its metadata (wire.InstanceKey), and it has a
// Calls stream of its own, so the instance is configured (Configure) and
// called apart from every other instance of the process, while the
// process, its connection and its body region are shared. Kill on any
// instance stops the process and with it every instance; Close ends only
// this instance's Calls stream. id must differ from "" (c's own instance)
// and from every other instance's. Errors: ErrNoInstances; opening the
// Calls stream (the process is gone), as a *TransportError.
func (c *Client) Instance(id string) (*Client, error) {
	if !c.instances {
		return nil, ErrNoInstances
	}
	i := &Client{pc: c.pc, info: c.info, region: c.region, replies: c.replies, conn: c.conn, instances: true,
		rpc: pb.NewStageClient(instanceConn{cc: c.conn, id: id})}
	if c.calls != nil {
		var err error
		if i.calls, err = newBatcher(i.rpc); err != nil {
			return nil, transport(err)
		}
	}
	return i, nil
}

// Close ends the instance's Calls stream (its calls in flight fail); the
// process lives on for its other instances.
func (c *Client) Close() {
	if c.calls != nil {
		c.calls.close()
	}
}

// instanceConn is the process's connection with the instance's id added
// to the metadata of every call and stream.
type instanceConn struct {
	cc grpc.ClientConnInterface
	id string
}

func (i instanceConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return i.cc.Invoke(metadata.AppendToOutgoingContext(ctx, wire.InstanceKey, i.id), method, args, reply, opts...)
}

func (i instanceConn) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return i.cc.NewStream(metadata.AppendToOutgoingContext(ctx, wire.InstanceKey, i.id), desc, method, opts...)
}
