package sdk

import (
	"time"

	"github.com/mixmta/mixmta/internal/pb"
)

// The plugin's half of the encoding between the SDK's types and the
// protocol's messages (internal/pb); the host's half is in
// internal/pluginclient.

func envelopeToPB(e Envelope) *pb.Envelope {
	return &pb.Envelope{MailFrom: e.MailFrom, RcptTo: e.RcptTo, Smtputf8: e.SMTPUTF8, BodyType: string(e.BodyType)}
}

func envelopeFromPB(e *pb.Envelope) Envelope {
	return Envelope{MailFrom: e.GetMailFrom(), RcptTo: e.GetRcptTo(), SMTPUTF8: e.GetSmtputf8(), BodyType: BodyType(e.GetBodyType())}
}

func messageFromPB(meta *pb.MessageMeta, header, body []byte) *Message {
	m := &Message{
		ID: meta.GetId(), Envelope: envelopeFromPB(meta.GetEnvelope()), Size: meta.GetSize(),
		Attempt: int(meta.GetAttempt()), Header: header, Body: body,
	}
	if body != nil {
		m.BodyLen = int64(len(body))
	}
	if n := meta.GetReceivedUnixNano(); n != 0 {
		m.ReceivedAt = time.Unix(0, n)
	}
	return m
}

func statusToPB(err error) *pb.Status {
	e := AsError(err)
	if e == nil {
		return &pb.Status{}
	}
	kind := int32(2)
	if e.Temporary {
		kind = 1
	}
	return &pb.Status{Kind: kind, SmtpCode: int32(e.SMTPCode()), EnhancedCode: e.EnhancedCode(), Text: e.Message}
}
