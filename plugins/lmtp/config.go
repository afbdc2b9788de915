package main

import (
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/mixmta/mixmta/sdk"
)

// Config is the stage's config block in the pipeline file. The defaults
// are in main.go; README.md explains every key.
type Config struct {
	Address        string       `json:"address" required:"true" doc:"LMTP server: an absolute path or unix:PATH for a Unix socket, or HOST:PORT for TCP"`
	LHLOName       string       `json:"lhlo_name" doc:"the name this client gives in LHLO"`
	ConnectTimeout sdk.Duration `json:"connect_timeout" doc:"time allowed to connect"`
	Timeout        sdk.Duration `json:"timeout" doc:"time allowed for each command's reply, and for all replies after the message"`
}

// endpoint returns the network ("unix" or "tcp") and address to dial.
func (c *Config) endpoint() (network, addr string) {
	if p, ok := strings.CutPrefix(c.Address, "unix:"); ok {
		return "unix", p
	}
	if filepath.IsAbs(c.Address) {
		return "unix", c.Address
	}
	return "tcp", c.Address
}

// Validate checks every key; errors name the key.
func (c *Config) Validate() error {
	network, addr := c.endpoint()
	switch {
	case c.Address == "":
		return sdk.FieldErrorf("address", "required")
	case network == "unix" && !filepath.IsAbs(addr):
		return sdk.FieldErrorf("address", "a Unix socket needs an absolute path, got %q", addr)
	case network == "tcp":
		host, port, err := net.SplitHostPort(addr)
		if err != nil || host == "" {
			return sdk.FieldErrorf("address", "want an absolute socket path, unix:PATH or HOST:PORT, got %q", addr)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return sdk.FieldErrorf("address", "port %q is not 1-65535", port)
		}
	}
	if c.LHLOName == "" || strings.ContainsAny(c.LHLOName, " \t\r\n") {
		return sdk.FieldErrorf("lhlo_name", "must be one word, got %q", c.LHLOName)
	}
	if c.ConnectTimeout <= 0 {
		return sdk.FieldErrorf("connect_timeout", "must be positive")
	}
	if c.Timeout <= 0 {
		return sdk.FieldErrorf("timeout", "must be positive")
	}
	return nil
}
