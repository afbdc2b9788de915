//go:build tools

// Package tools pins the modules the project builds on, so helpers working
// in parallel share one go.mod. Removed once every module is imported.
package tools

import (
	_ "github.com/dgraph-io/badger/v4"
	_ "github.com/emersion/go-message"
	_ "github.com/emersion/go-msgauth/dkim"
	_ "github.com/emersion/go-sasl"
	_ "github.com/emersion/go-smtp"
	_ "github.com/hashicorp/go-hclog"
	_ "github.com/hashicorp/go-plugin"
	_ "github.com/miekg/dns"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/spf13/cobra"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/crypto/curve25519"
	_ "golang.org/x/net/proxy"
	_ "google.golang.org/grpc"
	_ "google.golang.org/protobuf/proto"
)
