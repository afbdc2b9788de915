package wire

import "github.com/hashicorp/go-plugin"

// Handshake is the go-plugin handshake shared by the core and every plugin.
// A binary started without the cookie (e.g. by hand) prints a hint and exits.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  ProtocolVersion,
	MagicCookieKey:   "MIXMTA_PLUGIN",
	MagicCookieValue: "stage-v1-9f3b6a1c0d2e4785",
}

// LogLevelEnv names the environment variable through which the core passes
// its log level to a plugin (plugins do not inherit the core's environment).
const LogLevelEnv = "MIXMTA_LOG_LEVEL"
