// Framer + server session fed arbitrary bytes, split at a point the input
// chooses. Invariants: no crash; no message is committed from DATA unless
// the raw stream ended that DATA with <CRLF>.<CRLF> (SMTP smuggling); every
// reply line within RFC 5321's 512 octets; at most two replies per step.

import NIOCore
import TernProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSession(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let first = bytes.first else { return 0 }
    // The first byte picks the policy and where the input is split in two reads.
    var config = SessionConfig(hostname: "mx.fuzz.test")
    config.relay = RelayPolicy(relayDomains: ["local.test"])
    config.bareNewline = first & 1 == 0 ? .normalize : .reject
    config.maxMessageSize = 4096
    config.startTLS = first & 2 != 0
    config.checkSender = first & 8 != 0
    var session = SMTPServerSession(config: config, client: ClientInfo(address: IPAddress("192.0.2.1"), addressText: "192.0.2.1", trusted: first & 4 != 0))
    var framer = SMTPFramer(commandLineLimit: config.maxCommandLine + SMTPFramer.extensionAllowance, textLineLimit: config.maxTextLine)
    let input = Array(bytes.dropFirst())
    let split = input.isEmpty ? 0 : Int(first) % (input.count + 1)
    var buffer = ByteBuffer()
    var fed = 0
    for piece in [input[..<split], input[split...]] {
        buffer.writeBytes(piece)
        fed += piece.count
        while session.state != .closed {
            framer.mode = session.inputMode
            guard let frame = framer.next(&buffer) else { break }
            guard let action = session.receive(frame) else { continue }
            check(action, frame: frame, consumed: Array(input[..<(fed - buffer.readableBytes)]), session: &session)
        }
    }
    return 0
}

func check(_ action: SessionAction, frame: SMTPFrame, consumed: [UInt8], session: inout SMTPServerSession) {
    switch action {
    case .reply(let replies, _):
        precondition(replies.count <= 2, "more than two replies for one frame")
        for r in replies { for line in r.lines { precondition(line.utf8.count + 10 <= 512, "reply line too long") } }
    case .commit(_, _):
        if case .line = frame {
            // DATA ends only with CRLF "." CRLF on the raw stream.
            precondition(consumed.count >= 5 && Array(consumed.suffix(5)) == [13, 10, 46, 13, 10], "DATA ended without <CRLF>.<CRLF>")
        }
        let next = session.commitFinished(.accepted(queueID: "FUZZ"))
        if case .reply(let r, _) = next { precondition(r.count == 1) }
    case .startTLS:
        session.tlsEstablished("TLSv1.3")
    case .authenticate:
        _ = session.authFinished(.failure)
    case .checkSender:
        // Accept and refuse in turn, by the consumed length.
        // One reply, or two when the refusal is one error too many (it and the 421).
        let next = session.senderChecked(consumed.count % 2 == 0 ? nil : SMTPReply(550, .spfFailed, "SPF"))
        if case .reply(let r, let close) = next { precondition(r.count == 1 || (r.count == 2 && close && r[1].code == 421)) }
        precondition(session.state != .checkingSender, "the sender check was not finished")
    }
}
