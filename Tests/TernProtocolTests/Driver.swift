// Drives the framer and the session machine the way the listener does, with
// no socket: bytes in, replies and commits out.
import NIOCore
@testable import TernProtocol

struct Driver {
    var session: SMTPServerSession
    var framer: SMTPFramer
    var buffer = ByteBuffer()
    var replies: [SMTPReply] = []
    var commits: [(envelope: Envelope, body: String)] = []
    var closed = false
    var outcome: CommitOutcome = .accepted(queueID: "QID1")
    /// Accounts the stand-in authenticator knows: name → (password, allowed senders).
    var accounts: [String: (password: String, senders: [String])] = [:]
    /// Credentials the session handed out for checking.
    var checked: [Credentials] = []
    /// When set, every authentication ends this way instead.
    var authOverride: AuthOutcome? = nil

    init(config: SessionConfig = Driver.config(), trusted: Bool = true, address: String = "127.0.0.1") {
        session = SMTPServerSession(config: config, client: ClientInfo(address: IPAddress(address), addressText: address, trusted: trusted))
        framer = SMTPFramer(commandLineLimit: config.maxCommandLine + SMTPFramer.extensionAllowance, textLineLimit: config.maxTextLine)
    }

    static func config(_ edit: (inout SessionConfig) -> Void = { _ in }) -> SessionConfig {
        var c = SessionConfig(hostname: "mx.test")
        c.relay = RelayPolicy(relayDomains: ["local.test"])
        edit(&c)
        return c
    }

    mutating func feed(_ text: String) { feed(bytes: Array(text.utf8)) }

    /// Senders the session asked to check (`.checkSender`), and the answer it gets.
    var checkedSenders: [SMTPPath] = []
    var senderRefusal: SMTPReply? = nil

    mutating func feed(bytes: [UInt8]) {
        buffer.writeBytes(bytes)
        while !closed {
            framer.mode = session.inputMode
            guard let frame = framer.next(&buffer) else { break }
            guard let action = session.receive(frame) else { continue }
            apply(action)
        }
    }

    mutating func apply(_ action: SessionAction) {
        switch action {
        case .reply(let rs, let close):
            replies += rs
            if close { closed = true }
        case .startTLS(let r):
            // As the listener does: the 220, drop what was buffered, handshake.
            replies.append(r)
            buffer.clear()
            session.tlsEstablished("TLSv1.3")
        case .commit(let env, let body):
            commits.append((env, String(decoding: body.readableBytesView, as: UTF8.self)))
            apply(session.commitFinished(outcome))
        case .authenticate(let credentials, _):
            checked.append(credentials)
            if let o = authOverride { apply(session.authFinished(o)); return }
            if let a = accounts[credentials.username], a.password == credentials.password {
                apply(session.authFinished(.success(AuthIdentity(name: credentials.username, allowedSenders: a.senders))))
            } else {
                apply(session.authFinished(.failure))
            }
        case .checkSender(let path):
            checkedSenders.append(path)
            apply(session.senderChecked(senderRefusal))
        }
    }

    /// "code enhanced" of every reply so far.
    var codes: [String] { replies.map { r in r.enhanced.map { "\(r.code) \($0)" } ?? "\(r.code)" } }
    var last: String { codes.last ?? "" }

    /// Replies as they would go on the wire.
    var transcript: String { replies.map(\.wireText).joined() }
}
