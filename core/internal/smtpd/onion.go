package smtpd

import "github.com/mixmta/mixmta/sdk/onion"

// checkOnion refuses a domain that ends in ".onion" but is not a valid v3
// onion address (rend-spec-v3 §6: 56 base32 characters, version 3, the
// SHA3 checksum): a mistyped address, or a v2 address, whose service no
// longer exists. No route can reach it, so it is refused at the command
// rather than bounced later. The error text says what is wrong.
func checkOnion(domain string) error {
	if !onion.IsOnion(domain) {
		return nil
	}
	_, _, err := onion.Parse(domain)
	return err
}
