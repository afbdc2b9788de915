package wire

// Stage instances: one plugin process serves every stage of a pipeline
// that names its binary (three delay stages, two sanitize stages), each
// stage an instance of its own made by the plugin's New with its own
// config. Every RPC names its instance in the gRPC metadata key
// InstanceKey (on each unary call, and once when a stream opens: the
// Calls stream of an instance carries only that instance's calls). A call
// without the key goes to the instance "" (a host that runs one stage per
// process, as before instances existed).

// InstanceKey is the gRPC metadata key holding a call's stage instance id
// (lower case, as HTTP/2 header names are).
const InstanceKey = "mixmta-instance"

// InstancesKey is the header metadata key a plugin sets on its Info reply
// when it routes calls by InstanceKey; a plugin built with an SDK that
// does not (it would give every call to the stage configured last) gets
// a process per stage.
const InstancesKey = "mixmta-instances"

// MaxInstances bounds the stage instances one plugin process keeps (a
// pipeline has a few dozen stages at most).
const MaxInstances = 256
