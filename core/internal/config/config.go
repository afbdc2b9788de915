// Package config loads and validates a mixmta pipeline file (YAML). Decoding
// is strict: an unknown key, a duplicate key, a wrong type or a missing
// required value fails with file:line. Each stage's config block is checked
// against the schema its plugin reports, and handed to the plugin as JSON.
//
// Unset and explicitly written values differ: a key that is absent (or
// written with no value) gets its default from SetDefaults, while a key
// written as 0 keeps 0 and is then rejected where 0 is not allowed (for
// example "retry.max_attempts: 0"), so that no explicit setting is
// silently replaced.
//
// Relative paths in the file (data_dir, plugin_dir, TLS files, users_file,
// destination_block_file) are relative to the working directory of the
// mixmta process, not to the directory of the pipeline file: run mixmta
// from the directory the file was written for (make run does so from the
// repository root), or use absolute paths.
//
// docs/configuration.md is the reference for every key.
package config

import (
	"net/netip"

	"go.yaml.in/yaml/v3"

	"github.com/mixmta/mixmta/sdk"
)

// Config is a whole pipeline file.
type Config struct {
	// Path is the file it was loaded from (not a YAML key).
	Path string `yaml:"-"`

	// Hostname is used in the SMTP greeting and EHLO. Default "mixmta.invalid"
	// (a remailer should not announce its real host name).
	Hostname string `yaml:"hostname"`
	// DataDir holds the queue (created 0700). Default "./var/data".
	DataDir string `yaml:"data_dir"`
	// PluginDir is where plugin binaries are found by name. Default "./bin".
	PluginDir string `yaml:"plugin_dir"`

	Log       Log        `yaml:"log"`
	Metrics   Metrics    `yaml:"metrics"`
	Queue     Queue      `yaml:"queue"`
	Scheduler Scheduler  `yaml:"scheduler"`
	Retry     Retry      `yaml:"retry"`
	Listeners []Listener `yaml:"listeners"`
	Pipeline  []Stage    `yaml:"pipeline"`

	// Plugins pins plugin binaries by name to a hex SHA-256. Every name
	// must be the plugin of some stage.
	Plugins map[string]PluginPin `yaml:"plugins"`

	// Mix makes this node a Sphinx mix node (docs/mixnet.md); absent, it
	// is not one.
	Mix *Mix `yaml:"mix"`

	// Tor makes Tor a component: outbound connections through it, onion
	// services for listeners (tor.go, docs/tor.md); absent, no Tor.
	Tor *Tor `yaml:"tor"`

	// Cover originates cover messages through the pipeline (cover.go);
	// absent, none.
	Cover *Cover `yaml:"cover"`

	// lines maps the path of every key written in the file
	// ("listeners[0].relay.anyone", "pipeline[2]") to its line, to locate
	// errors; unset holds those written with no value. Together they tell
	// "unset" from "written as zero".
	lines map[string]int
	unset map[string]bool
}

// Log configures logging.
type Log struct {
	// Level: error, warn, info (default), debug, trace. Addresses and
	// content appear only at debug and trace.
	Level string `yaml:"level"`
	// StatsInterval is the period of the [STATS] line (> 0). Default 1m.
	StatsInterval sdk.Duration `yaml:"stats_interval"`
	// Addresses adds MAIL FROM and RCPT TO to the [DELIVER] line of each
	// delivery attempt at info. Default false: no addresses at info.
	Addresses bool `yaml:"addresses"`
}

// Metrics configures the Prometheus endpoint.
type Metrics struct {
	// Address to serve /metrics on, host:port; "" disables. The host must
	// be a loopback IP literal (127.0.0.0/8 or ::1), not a name.
	Address string `yaml:"address"`
}

// Queue tunes the durable queue (badger).
type Queue struct {
	// MaxLifetime: an item not delivered within this time after it was
	// received is dropped and counted as failed (> 0). Default 5d.
	MaxLifetime sdk.Duration `yaml:"max_lifetime"`
	// GCInterval: how often value-log GC runs (> 0). Default 5m.
	GCInterval sdk.Duration `yaml:"gc_interval"`
	// Workers: concurrent pipeline workers (>= 1). Default 8.
	Workers int `yaml:"workers"`
	// FreeSpaceReserve: free bytes the data dir's filesystem keeps; below
	// it MAIL and DATA are answered 452 4.3.1 (RFC 3463 "mail system
	// full") while queued mail is still delivered (>= 0; 0 disables the
	// check). Default 256 MiB: room for one value-log file (64 MiB) and
	// the memtables badger writes through mmap, where a full filesystem is
	// a SIGBUS rather than an error, plus a 25 MiB message.
	FreeSpaceReserve int64 `yaml:"free_space_reserve"`
	// MaxItems: items the queue holds at most (the queue_items gauge:
	// accepted and not yet delivered, bounced or dropped, deferred ones
	// included; >= 0, 0 for no limit). At the limit
	// MAIL, RCPT and DATA are answered 451 4.3.2 (RFC 3463 "system not
	// accepting network messages") until deliveries make room: the client
	// keeps the message, nothing accepted is dropped. Sessions finishing
	// DATA at the same moment may each take one item past it. Default 0.
	MaxItems int64 `yaml:"max_items"`
}

// Scheduler configures the timed batch pool (Mixmaster-style).
type Scheduler struct {
	// Window: the pool is flushed once per window (> 0). Default 1s.
	Window sdk.Duration `yaml:"window"`
	// MinPool: this many due items always stay in the pool (>= 0).
	// Default 0.
	MinPool int `yaml:"min_pool"`
	// SendFraction: at most this fraction of the pool leaves per window
	// (0 < f <= 1). Default 1.
	SendFraction float64 `yaml:"send_fraction"`
	// MaxBatch caps the items released per window (0 = no cap).
	MaxBatch int `yaml:"max_batch"`
	// Concurrency: deliveries in flight at once per deliverer (>= 1).
	// Default 16.
	Concurrency int `yaml:"concurrency"`
}

// Retry is the backoff schedule for temporary failures.
type Retry struct {
	// MaxAttempts: delivery attempts before an item fails permanently
	// (>= 1). Default 9.
	MaxAttempts int `yaml:"max_attempts"`
	// Base and Factor: attempt n waits Base*Factor^n. Default 2s and 2;
	// Base > 0, Factor >= 1.
	Base   sdk.Duration `yaml:"base"`
	Factor float64      `yaml:"factor"`
	// Max caps one wait (>= Base). Default 1h.
	Max sdk.Duration `yaml:"max"`
	// Jitter: each wait is multiplied by a uniform factor in
	// [1-Jitter, 1+Jitter], 0 <= Jitter < 1. Default 0.2.
	Jitter float64 `yaml:"jitter"`
	// Schedule, if set, replaces Base/Factor: explicit waits per attempt
	// (the last one repeats; still capped by Max).
	Schedule []sdk.Duration `yaml:"schedule"`
	// Bounce: send a non-delivery report to MAIL FROM on permanent failure.
	// Default false (an anonymous sender has no return path).
	Bounce bool `yaml:"bounce"`
}

// Listener is one SMTP listener with its own relay policy.
type Listener struct {
	// Name identifies the listener in logs and metrics; unique. Default
	// the address.
	Name string `yaml:"name"`
	// Address is host:port to listen on (required, unique); port 0 picks
	// a free port.
	Address string `yaml:"address"`

	// Limits (RFC 5321 §4.5.3.1), all >= 1. Defaults: 25 MiB, 100, 4000,
	// 1 MiB, 1000. MaxLineLength counts the CRLF and must be at least 1000
	// (RFC 5321 §4.5.3.1.6).
	MaxMessageBytes int64 `yaml:"max_message_bytes"`
	MaxRecipients   int   `yaml:"max_recipients"`
	MaxLineLength   int   `yaml:"max_line_length"`
	MaxHeaderBytes  int64 `yaml:"max_header_bytes"`
	MaxHeaderFields int   `yaml:"max_header_fields"`
	// Timeouts (> 0). Defaults 5m read (RFC 5321 §4.5.3.2 data block), 1m
	// write.
	ReadTimeout  sdk.Duration `yaml:"read_timeout"`
	WriteTimeout sdk.Duration `yaml:"write_timeout"`
	// MaxSessions: concurrent sessions; more are refused with 421. Default 100.
	MaxSessions int `yaml:"max_sessions"`
	// MaxSessionsPerClient: concurrent sessions from one source address;
	// more are refused with 421 4.7.0. Default 50 (Postfix's
	// smtpd_client_connection_count_limit: half of max_sessions, above
	// Postfix's 20 parallel deliveries to one destination). Behind a Tor onion
	// service every client is 127.0.0.1, so there this is the cap for all
	// Tor clients together: set it to max_sessions on an onion listener
	// and bound each circuit in torrc (HiddenServiceMaxStreams).
	MaxSessionsPerClient int `yaml:"max_sessions_per_client"`
	// MaxSessionTime ends any session this long after it was accepted
	// (421 4.4.2), however busy it keeps itself. Default 10m.
	MaxSessionTime sdk.Duration `yaml:"max_session_time"`
	// MinDataRate in bytes per second during DATA and BDAT: the message
	// starts with read_timeout of credit, each read adds bytes/rate
	// seconds (capped at read_timeout) and spends the time it took, like
	// Postfix's smtpd_min_data_rate. Out of credit: 421 4.4.2 and close.
	// Default 500.
	MinDataRate int `yaml:"min_data_rate"`
	// MaxJunkCommands: NOOP, RSET and VRFY per session, counted afresh
	// after each accepted message; the next ends it with 421 4.7.0
	// (Postfix's smtpd_junk_command_limit). Default 100.
	MaxJunkCommands int `yaml:"max_junk_commands"`
	// MaxErrors: 4xx/5xx replies per session, counted afresh after each
	// accepted message; the next ends it with 421 4.7.0 (Postfix's
	// smtpd_hard_error_limit). Default 20.
	MaxErrors int `yaml:"max_errors"`

	// TLS, if set, offers STARTTLS.
	TLS *TLS `yaml:"tls"`
	// Auth, if set, offers AUTH; it needs TLS.
	Auth *Auth `yaml:"auth"`

	Relay Relay `yaml:"relay"`
	// LocalDomains are accepted as recipients from any client. Domain
	// names in ASCII (A-label) form, no trailing dot, compared
	// case-insensitively with the recipient's domain in A-label form.
	LocalDomains []string `yaml:"local_domains"`
}

// TLS enables STARTTLS from PEM certificate files (both required; Load
// checks that they can be read).
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// Auth enables AUTH PLAIN (RFC 4616), offered only after STARTTLS.
type Auth struct {
	// UsersFile holds "user:hash" lines, one per user, with bcrypt or
	// Argon2id hashes (`mixmta users add` writes them); mode 0600
	// (required; Load reads and checks it exactly as the listener does).
	UsersFile string `yaml:"users_file"`
}

// Relay says who may send to any domain through this listener. Nothing
// set: nobody may relay (default-deny). Loopback is never trusted
// implicitly.
type Relay struct {
	// Networks whose clients may relay (CIDR, e.g. 127.0.0.1/32). A
	// prefix of length 0 (0.0.0.0/0, ::/0) is refused: that is Anyone
	// without a rate limit.
	Networks []netip.Prefix `yaml:"networks"`
	// AuthenticatedUsers: clients that passed AUTH may relay (needs Auth).
	AuthenticatedUsers bool `yaml:"authenticated_users"`
	// Anyone: a public remailer entry; requires RateLimit.
	Anyone bool `yaml:"anyone"`
	// RateLimit per client IP (required with Anyone).
	RateLimit *RateLimit `yaml:"rate_limit"`
	// MaxRecipients per message for relayed mail (0 = listener limit).
	MaxRecipients int `yaml:"max_recipients"`
	// DestinationBlockFile: Mixmaster dest.blk-style opt-out list: one
	// address, @domain, or /regexp/ per line (see ReadBlockList; Load
	// reads it to check it).
	DestinationBlockFile string `yaml:"destination_block_file"`
}

// RateLimit is a token bucket: Messages (>= 1) per Per (> 0), burst
// Burst (default Messages).
type RateLimit struct {
	Messages int          `yaml:"messages"`
	Per      sdk.Duration `yaml:"per"`
	Burst    int          `yaml:"burst"`
}

// Stage is one pipeline stage: a plugin and its config block.
type Stage struct {
	// Name is unique in the pipeline and matches ^[a-z0-9][a-z0-9_-]*$.
	Name string `yaml:"name"`
	// Plugin is the binary's name in plugin_dir, same syntax as Name.
	Plugin string `yaml:"plugin"`
	// Config is the raw block, validated against the plugin's schema
	// (ValidateBlock) and sent to it as JSON (BlockJSON).
	Config RawBlock `yaml:"config"`
	// Process is "shared" or empty: the stage is an instance in the one
	// process that serves every stage of its binary; "own": a process of
	// its own. (Empty stays empty in the defaulted config.)
	Process string `yaml:"process" json:",omitempty"`
	// Line is where the stage starts in the file (not a YAML key).
	Line int `yaml:"-"`
}

// PluginPin pins a plugin binary.
type PluginPin struct {
	// SHA256 of the binary, 64 hex digits.
	SHA256 string `yaml:"sha256"`
}

// RawBlock is a stage's config block as written: a YAML mapping, or nil
// when the stage has none.
type RawBlock struct {
	Node *yaml.Node
	// keyLine is the line of the "config:" key (0 if absent).
	keyLine int
}

// UnmarshalYAML keeps the node. Parse does not go through it (it walks
// the document itself); it is here for code decoding a Stage directly.
func (b *RawBlock) UnmarshalYAML(n *yaml.Node) error {
	b.Node = n
	return nil
}

// Mix configures this node's part in a Sphinx mixnet (docs/mixnet.md).
type Mix struct {
	// Name of this node in its descriptor (required).
	Name string `yaml:"name"`
	// Address the mix listener binds and the descriptor announces
	// (host:port, required).
	Address string `yaml:"address"`
	// NodesFile is the verified directory of nodes (nodes.json, required).
	NodesFile string `yaml:"nodes_file"`
	// KeysDir holds the identity key and the epoch mix keys (created
	// 0700). Default DATA_DIR/keys.
	KeysDir string `yaml:"keys_dir"`
	// Exit: this node delivers mail (its descriptor says "exit").
	Exit bool `yaml:"exit"`
	// Capabilities this node's descriptor lists besides "exit", e.g.
	// "mail2news": it reassembles messages for mail2news addresses and
	// posts them (its pipeline ends in the mail2news deliverer).
	Capabilities []string `yaml:"capabilities"`
	// Mixer names the pipeline stage whose plugin also serves the mixer
	// kind (default: the one stage whose plugin offers it).
	Mixer string `yaml:"mixer"`
	// HopDelay is the delay stage sampled for every forwarded packet
	// (required; e.g. delay-exponential with a mean of seconds).
	HopDelay Stage `yaml:"hop_delay"`
	// PacketSize in bytes, the same on every node. Default 65536.
	PacketSize int `yaml:"packet_size"`
	// Epoch is the mix key lifetime. Default 1h.
	Epoch sdk.Duration `yaml:"epoch"`
	// Grace: an old epoch key still serves packets this long after its
	// epoch, then it is deleted. Default 10m.
	Grace sdk.Duration `yaml:"grace"`
	// KeysAhead: epochs after the current one that already have keys in
	// the descriptor, so a nodes file stays usable that long. Every key
	// ahead is a private key on disk that whoever seizes the node can use
	// on the traffic of its epoch. Default 1 (the next epoch only).
	KeysAhead int `yaml:"keys_ahead"`
	// SphinxFormat is the network's Sphinx packet format, "x25519" or
	// "xwing" (hybrid X25519 + ML-KEM-768): the algorithm of this node's
	// mix keys. The nodes file must state the same, and so must the mixer
	// stage's sphinx_format. Default x25519.
	SphinxFormat string `yaml:"sphinx_format"`
	// ProbeInterval between link probes of every node. Default 30s.
	ProbeInterval sdk.Duration `yaml:"probe_interval"`
	// LoopTimeout: a loop packet not back by then counts against its
	// path. 0 (default): derived from the hop delay stage, the 99.9 %
	// quantile of a loop's total delay plus pool waits.
	LoopTimeout sdk.Duration `yaml:"loop_timeout"`
	// Cover traffic rates.
	Cover MixCover `yaml:"cover"`
	// SendRate is λ_P, packets per second (Loopix §4.2): this node sends
	// its own packets at the ticks of a Poisson process of this rate, a
	// drop cover packet at every tick with none waiting. Default 0.2.
	SendRate float64 `yaml:"send_rate"`
	// SendQueueLimit: own packets waiting for a tick at which new mail is
	// refused with 452 4.3.1 and routing waits. 0 (default): ⌈send_rate ×
	// grace⌉, so no packet outlives its epoch key while it waits.
	SendQueueLimit int `yaml:"send_queue_limit"`
	// FrameLog, if set, is a file that receives one line per frame on the
	// mix links (direction, peer, size): a test and debugging aid.
	FrameLog string `yaml:"frame_log"`
	// DestinationBlockFile is the exit's destination opt-out list (the
	// ReadBlockList format): a message reassembled here is not delivered
	// to a recipient it lists. Mail from the mixnet never passes a
	// listener, so a listener's list does not apply to it.
	DestinationBlockFile string `yaml:"destination_block_file"`
	// Directory: take the network's nodes from a consensus signed by a
	// majority of directory authorities instead of the nodes file.
	Directory *MixDirectory `yaml:"directory"`
}

// DirectoryKeysAhead is mix.keys_ahead with mix.directory, default and
// maximum: the next epoch's key and one epoch of margin, because a
// consensus is valid through the epoch after its own (a missed round is
// tolerated).
const DirectoryKeysAhead = 2

// MixDirectory is the network's list of directory authorities, and this
// node's authority role when Listen is set.
type MixDirectory struct {
	Authorities []MixAuthority `yaml:"authorities"`
	// Listen: this node is also an authority; its directory listener
	// binds this host:port (the address the others list for it).
	Listen string `yaml:"listen"`
	// AuthorityKey is this authority's Ed25519 key file (PKCS#8 PEM,
	// 0600), created at start when missing. Default KEYS_DIR/authority.key.
	AuthorityKey string `yaml:"authority_key"`
}

// MixAuthority is one directory authority of the network.
type MixAuthority struct {
	Name string `yaml:"name"`
	// Identity is its 32-byte Ed25519 public key, base64.
	Identity string `yaml:"identity"`
	// Address of its directory listener, host:port (an onion address
	// with Tor).
	Address string `yaml:"address"`
}

// MixCover sets cover traffic: Poisson processes, in packets per second.
type MixCover struct {
	DropRate float64 `yaml:"drop_rate"`
	LoopRate float64 `yaml:"loop_rate"`
}
