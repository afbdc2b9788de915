package wire

// The body region: shared memory (a memfd) the core creates for each
// plugin process and passes it at start, read-only. A batched call whose
// body fits a slot carries only the slot's number: the core writes the
// body there once, and the plugin reads it from its mapping instead of
// receiving it through gRPC (encoded, written to the socket in 16 KiB
// HTTP/2 frames, read, reassembled and decoded: four copies and most of
// a 64 KiB call's CPU on each side). The bytes in the region are what the
// plugin is sent anyway (only to a stage that declared a body need), in
// memory as they would be in gRPC's buffers; the queue's key and the
// sealed values at rest never leave the core.

// BodyRegionEnv names the variable that tells a plugin the descriptor of
// its body region.
const BodyRegionEnv = "MIXMTA_BODY_FD"

// RegionSlots is the number of bodies in flight through the region per
// plugin (32, the core's workers at most); a call that finds no free slot
// sends its body inline.
const RegionSlots = 32

// RegionFD is the descriptor the region has in the plugin: the first of
// exec.Cmd.ExtraFiles.
const RegionFD = 3

// The reply region: a second memfd of the same layout, writable by the
// plugin, for replies as large as a packet (a Mix call's forward packet or
// exit fragment). A call whose body is in slot k may have its large reply
// written to slot k of the reply region: the slot stays the call's until
// the core has read the reply (with pread, into memory of its own, so what
// the plugin writes later cannot change what the core acts on). The core
// only reads a slot a reply names for a call it sent with that slot, and
// never more than InlineMax bytes.

// ReplyRegionEnv names the variable that tells a plugin the descriptor of
// its reply region.
const ReplyRegionEnv = "MIXMTA_REPLY_FD"

// ReplyRegionFD is the descriptor the reply region has in the plugin: the
// second of exec.Cmd.ExtraFiles.
const ReplyRegionFD = 4
