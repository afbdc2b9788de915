package main

import (
	"strings"

	"github.com/mixmta/mixmta/sdk"
)

// exitNeeds says what the exit of a message must be able to deliver.
type exitNeeds struct {
	mail bool // a recipient is ordinary mail: capability exit
	news bool // a recipient is a mail2news address: capability mail2news
}

// needs sorts the recipients: a local part starting with newsPrefix
// (case-insensitive) is a mail2news address, anything else is mail.
func (s *Stage) needs(rcpts []string) exitNeeds {
	var n exitNeeds
	for _, r := range rcpts {
		local := r
		if i := strings.LastIndexByte(r, '@'); i >= 0 {
			local = r[:i]
		}
		if s.newsPrefix != "" && strings.HasPrefix(strings.ToLower(local), s.newsPrefix) {
			n.news = true
		} else {
			n.mail = true
		}
	}
	return n
}

// byKind splits the recipients into mail2news addresses and ordinary mail,
// in their order.
func (s *Stage) byKind(rcpts []string) (news, mail []string) {
	for _, r := range rcpts {
		if s.needs([]string{r}).news {
			news = append(news, r)
		} else {
			mail = append(mail, r)
		}
	}
	return news, mail
}

// exitsFor returns cands with exit set only on the nodes that can deliver
// every recipient: exit for mail, mail2news for news, both for a message
// with both. Other nodes stay usable as middle hops. A message for
// mail2news addresses never falls back to an exit without the capability:
// when none is healthy it waits (temporary error), as any message waits
// for a path.
func exitsFor(cands []candidate, n exitNeeds) ([]candidate, error) {
	if !n.news {
		return cands, nil // candidate.exit already means capability exit
	}
	out := make([]candidate, len(cands))
	found := false
	for i, c := range cands {
		c.exit = c.news && (c.exit || !n.mail)
		found = found || c.exit
		out[i] = c
	}
	if !found {
		return nil, sdk.Temporary(451, "4.0", "sphinx: no healthy exit node with the mail2news capability (%d usable nodes)", len(cands))
	}
	return out, nil
}

// validLocalPrefix accepts "" or a lower-case local-part prefix.
func validLocalPrefix(s string) bool {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return len(s) <= 64
}
