package pluginclient

import (
	"github.com/mixmta/mixmta/internal/pb"
	"github.com/mixmta/mixmta/sdk"
)

// The host's half of the encoding between the SDK's types and the
// protocol's messages; the plugin's half is in sdk (convert.go).

func envelopeToPB(e sdk.Envelope) *pb.Envelope {
	return &pb.Envelope{MailFrom: e.MailFrom, RcptTo: e.RcptTo, Smtputf8: e.SMTPUTF8, BodyType: string(e.BodyType)}
}

func envelopeFromPB(e *pb.Envelope) sdk.Envelope {
	return sdk.Envelope{MailFrom: e.GetMailFrom(), RcptTo: e.GetRcptTo(), SMTPUTF8: e.GetSmtputf8(), BodyType: sdk.BodyType(e.GetBodyType())}
}

func metaToPB(m *sdk.Message, sendHeader, sendBody bool) *pb.MessageMeta {
	meta := &pb.MessageMeta{
		Id: m.ID, Envelope: envelopeToPB(m.Envelope), Attempt: int32(m.Attempt), Size: m.Size,
	}
	if !m.ReceivedAt.IsZero() {
		meta.ReceivedUnixNano = m.ReceivedAt.UnixNano()
	}
	if sendHeader && m.Header != nil {
		meta.HeaderPresent, meta.HeaderLen = true, int64(len(m.Header))
	}
	switch {
	case sendBody && m.Body != nil:
		meta.BodyPresent, meta.BodyLen = true, int64(len(m.Body))
	case sendBody && m.OpenBody != nil:
		meta.BodyPresent, meta.BodyLen = true, m.BodyLen
	}
	return meta
}

func statusFromPB(s *pb.Status) error {
	if s == nil || s.GetKind() == 0 {
		return nil
	}
	return &sdk.Error{Temporary: s.GetKind() == 1, Code: int(s.GetSmtpCode()), Enhanced: s.GetEnhancedCode(), Message: s.GetText()}
}

func keysToPB(ks []sdk.EpochKey) []*pb.EpochKey {
	out := make([]*pb.EpochKey, 0, len(ks))
	for _, k := range ks {
		out = append(out, &pb.EpochKey{Epoch: k.Epoch, PublicKey: k.Public,
			NotBeforeUnix: k.NotBefore.Unix(), NotAfterUnix: k.NotAfter.Unix()})
	}
	return out
}
