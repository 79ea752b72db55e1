// The client session against a hostile server: the input is the server's
// side of the dialog (reply lines; a line "!" stands for the connection
// dropping, "T" for TLS coming up). The session opens (PIPELINING, STARTTLS
// and HELO paths as the replies lead) and sends two messages, the second
// started with the first one's content. Invariants: no crash; every message
// ends with an outcome for each of its recipients and no others; a session
// that failed or broke never QUITs; no exchange expects more replies than
// the commands it sends.

import TernProtocol

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClient(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var lines = Array(UnsafeBufferPointer(start: data, count: size)).split(separator: 10, omittingEmptySubsequences: false)
        .map { raw -> String in
            var l = String(decoding: raw, as: UTF8.self)
            if l.hasSuffix("\r") { l.removeLast() }
            return l
        }[...]
    var parser = ReplyParser()
    var session = ClientSession(.init(heloName: "tern.test", tlsPolicy: .may, tlsAvailable: true, maxHops: 50,
                                      host: "mx.far.test", peer: "mx.far.test[192.0.2.1]:25"))

    /// Runs `action` to its end: a terminal action, or the input running out.
    func drive(_ first: ClientAction) -> ClientAction {
        var action = first
        while true {
            switch action {
            case .exchange(let commands, let steps):
                precondition(!steps.isEmpty && (commands.isEmpty ? steps == [.greeting] : commands.count == steps.count))
            case .content(let then, let steps):
                precondition(steps.first == .endOfData && steps.count == then.count + 1)
            case .endData:
                break
            case .startTLS:
                guard lines.first == "T" else { return session.fail(.protocolError("handshake")) }
                lines.removeFirst()
                action = session.tlsStarted()
                continue
            case .ready, .failed, .done, .quit, .drop:
                return action
            }
            // One reply (or a fault) at a time until the session acts.
            var next: ClientAction? = nil
            while next == nil {
                guard let line = lines.popFirst() else { return session.fail(.closed) }
                if line == "!" { next = session.fail(.closed); break }
                do {
                    if let reply = try parser.feed(line) { next = session.receive(reply) }
                } catch {
                    next = session.fail(.protocolError("bad reply"))
                }
            }
            action = next!
        }
    }

    guard drive(session.start()) == .ready else {
        precondition(session.close() == .drop || !session.broken)
        return 0
    }
    func message(_ id: Int64, _ n: Int) -> ClientMessage {
        ClientMessage(id: id, envelope: ClientEnvelope(
            mailFrom: "a@x.test", size: 100, bodyType: "8BITMIME", smtputf8: false, ret: nil, envID: nil,
            recipients: (0..<n).map { ClientRecipient(id: id * 100 + Int64($0), address: "u\($0)@far.test", notify: nil, orcpt: nil) }))
    }
    let first = message(1, 3), second = message(2, 2)
    for (m, next) in [(first, Optional(second)), (second, nil)] {
        guard case .done(let outcomes) = drive(session.send(m, next: next)) else { preconditionFailure("a message without outcomes") }
        precondition(Set(outcomes.keys) == Set(m.envelope.recipients.map(\.id)), "outcomes for other recipients")
        if session.broken { break }
    }
    if session.broken { precondition(session.close() == .drop, "QUIT on a broken session") } else { _ = session.close() }
    return 0
}
