// The client side of an SMTP session (RFC 5321 §3, §4; PIPELINING RFC 2920;
// STARTTLS RFC 3207) as a pure state machine, like ServerSession on the other
// side: it takes replies (one at a time, in order) and returns what to do
// next — write these commands and read one reply per step, write the
// message content, put TLS on, report outcomes per recipient, QUIT. It
// never touches a socket or a clock; TernDelivery's SMTPClientConnection
// carries its actions out over NIO and maps steps to RFC 5321 §4.5.3.2's
// timeouts. Every reply is checked against the command it answers
// (ClientStep.accepts): one that does not fit means the session is out of
// step, and nothing said on it afterwards is trusted.

public struct ClientSession: Sendable {
    public struct Config: Sendable {
        /// The name we give in EHLO/HELO.
        public var heloName: String
        public var tlsPolicy: TLSPolicy
        /// The caller can put TLS on (it has contexts for the policy).
        public var tlsAvailable: Bool
        public var maxHops: Int
        /// The MX host name, and the hop as written in replies we make up
        /// ("mx.example.test[192.0.2.1]:25").
        public var host: String
        public var peer: String

        public init(heloName: String, tlsPolicy: TLSPolicy = .none, tlsAvailable: Bool = false, maxHops: Int = 50,
                    host: String, peer: String) {
            self.heloName = heloName
            self.tlsPolicy = tlsPolicy
            self.tlsAvailable = tlsAvailable
            self.maxHops = maxHops
            self.host = host
            self.peer = peer
        }
    }

    private enum Phase: Equatable {
        case greeting, ehlo, helo, startTLS, tlsHandshake, ehloAfterTLS
        /// Opening failed, but the dialog is sane: QUIT before closing.
        case refused
        case idle, transaction, quitting, closed
    }

    /// Where a message's transaction is.
    private enum Stage: Equatable {
        /// RSET (when `rset`), MAIL, RCPT… and DATA as one pipelined group.
        case group(rset: Bool)
        case rset, mail, rcpt(Int), data
        /// The content, with the next message's group when `nextStarted`.
        case content(nextStarted: Bool)
        /// A lone dot after a DATA that was accepted with nothing to carry.
        case endData
    }

    private struct Transaction {
        var message: ClientMessage
        var next: ClientMessage?
        var stage: Stage
        var mail: SMTPReply? = nil
        var rcpts: [SMTPReply] = []
        var data: SMTPReply? = nil
        var results: [Int64: RecipientOutcome] = [:]
        var accepted: [ClientRecipient] = []
        /// What a lost connection is reported "during".
        var phaseName = "MAIL"
    }

    public let config: Config
    public private(set) var capabilities = ServerCapabilities()
    /// The connection cannot carry another message (a 421, a fault, replies
    /// out of step, a transaction left waiting).
    public private(set) var broken = false
    /// STARTTLS succeeded on this session.
    public private(set) var tlsActive = false
    private var phase = Phase.greeting
    private var pending: [ClientStep] = []
    private var got: [SMTPReply] = []
    private var transaction: Transaction? = nil
    /// A MAIL was accepted and its transaction not ended by a reply to the
    /// final dot: the next message starts with RSET. After a completed
    /// transaction the server has reset already (RFC 5321 §4.1.1.4).
    private var openTransaction = false
    /// Replies to the commands of the message that went out with the
    /// previous one's content (RFC 2920 §3.1); it must be sent next.
    private var started: (id: Int64, mail: SMTPReply, rcpts: [SMTPReply], data: SMTPReply)? = nil
    /// The message whose commands went out with the previous one's content
    /// when the connection ended before all their replies came: what the
    /// replies that did come settle (a provider's "421 4.7.28 slow down"
    /// to its MAIL, then the close). It must still be reported, not given
    /// back as untried: the refusal is an attempt and a pacing signal.
    private var lostStarted: (id: Int64, results: [Int64: RecipientOutcome])? = nil

    public var startedMessageID: Int64? { started?.id ?? lostStarted?.id }
    /// Steps whose replies are still expected in the current exchange.
    public var expecting: [ClientStep] { pending }

    public init(_ config: Config) { self.config = config }

    /// The first action: wait for the greeting.
    public mutating func start() -> ClientAction { expect([], [.greeting]) }

    private mutating func expect(_ lines: [String], _ steps: [ClientStep]) -> ClientAction {
        pending = steps
        got = []
        return .exchange(lines, expecting: steps)
    }

    // MARK: - Replies

    /// The next reply, in order; an action when it completes the current
    /// exchange (or ends it: a reply out of step), nil while more are due.
    public mutating func receive(_ reply: SMTPReply) -> ClientAction? {
        guard let step = pending.first else { return fail(.protocolError("unsolicited reply: \(reply.keepingText(200))")) }
        if reply.code == 421 { broken = true } // RFC 5321 §3.8: the server is closing
        if !step.accepts(reply) && transaction?.stage != .endData && phase != .quitting {
            return fail(.outOfStep(step, reply))
        }
        pending.removeFirst()
        got.append(reply)
        guard pending.isEmpty else { return nil }
        let replies = got
        got = []
        return complete(replies)
    }

    /// The exchange ended without all its replies.
    public mutating func fail(_ fault: ClientFault) -> ClientAction {
        pending = []
        let replies = got
        got = []
        switch phase {
        case .greeting, .ehlo, .helo, .startTLS:
            return openFailed(.failure(SMTPReply(451, .connectionDropped, "\(config.peer) failed before mail: \(fault)")), quit: false)
        case .tlsHandshake, .ehloAfterTLS:
            return openFailed(.tlsFailure(SMTPReply(451, .cryptographicFailure, "TLS with \(config.peer) failed: \(fault)")), quit: false)
        case .idle, .refused, .quitting, .closed:
            broken = true
            phase = .closed
            return .drop
        case .transaction:
            return transactionFailed(fault, replies)
        }
    }

    private mutating func complete(_ replies: [SMTPReply]) -> ClientAction {
        switch phase {
        case .greeting:
            let greeting = replies[0]
            guard greeting.code == 220 else {
                return openFailed(.failure(SMTPReply(451, .noAnswerFromHost, "\(config.peer) greeted with: \(greeting.keepingText(400))")), quit: true)
            }
            // A server that greets with our own name is us (RFC 5321 §6.3).
            if isOurs(greeting) {
                return openFailed(.loop(loopReply("greets as")), quit: true)
            }
            phase = .ehlo
            return expect(["EHLO \(config.heloName)"], [.ehlo])
        case .ehlo:
            let ehlo = replies[0]
            guard ehlo.code == 250 else {
                phase = .helo
                return expect(["HELO \(config.heloName)"], [.helo])
            }
            if isOurs(ehlo) { return openFailed(.loop(loopReply("answers EHLO as")), quit: true) }
            capabilities = ServerCapabilities(ehloReply: ehlo)
            return negotiateTLS()
        case .helo:
            guard replies[0].code == 250 else {
                return openFailed(.failure(SMTPReply(451, .noAnswerFromHost, "\(config.peer) refused EHLO and HELO: \(replies[0])")), quit: true)
            }
            capabilities = ServerCapabilities()
            return negotiateTLS()
        case .startTLS:
            guard replies[0].code == 220 else {
                if config.tlsPolicy == .may { return opened() }
                return openFailed(.failure(SMTPReply(451, .encryptionNeeded, "\(config.peer) refused STARTTLS: \(replies[0])")), quit: false)
            }
            phase = .tlsHandshake
            return .startTLS
        case .tlsHandshake:
            return fail(.protocolError("a reply before the TLS handshake"))
        case .ehloAfterTLS:
            guard replies[0].code == 250 else { return fail(.protocolError("EHLO after STARTTLS: \(replies[0])")) }
            capabilities = ServerCapabilities(ehloReply: replies[0])
            tlsActive = true
            return opened()
        case .transaction:
            return transactionStep(replies)
        case .idle, .refused, .quitting, .closed:
            phase = .closed
            return .drop
        }
    }

    // MARK: - Opening

    private func isOurs(_ reply: SMTPReply) -> Bool {
        ClientProtocol.firstWord(reply).lowercased() == config.heloName.lowercased()
    }

    private func loopReply(_ how: String) -> SMTPReply {
        SMTPReply(554, .routingLoop, "mail for \(config.host) loops back to myself (\(config.peer) \(how) \(config.heloName))")
    }

    private mutating func openFailed(_ failure: ClientOpenFailure, quit: Bool) -> ClientAction {
        if quit && !broken {
            phase = .refused
        } else {
            broken = true
            phase = .closed
        }
        return .failed(failure, quit: quit && !broken)
    }

    private mutating func opened() -> ClientAction {
        phase = .idle
        return .ready
    }

    /// STARTTLS per the policy, after EHLO or HELO.
    private mutating func negotiateTLS() -> ClientAction {
        guard config.tlsPolicy != .none, config.tlsAvailable else { return opened() }
        guard capabilities.startTLS else {
            if config.tlsPolicy == .may { return opened() }
            return openFailed(.failure(SMTPReply(451, .encryptionNeeded, "\(config.peer) does not offer STARTTLS, which the TLS policy requires")),
                              quit: false)
        }
        phase = .startTLS
        return expect(["STARTTLS"], [.startTLS])
    }

    /// TLS is on: forget what was learned before and ask again (RFC 3207 §4.2).
    public mutating func tlsStarted() -> ClientAction {
        guard phase == .tlsHandshake else { return fail(.protocolError("TLS started out of turn")) }
        phase = .ehloAfterTLS
        capabilities = ServerCapabilities()
        return expect(["EHLO \(config.heloName)"], [.ehlo])
    }

    // MARK: - Messages

    /// Starts sending `message`; `next` may go out with its content and must
    /// then be sent next, on this session, whatever else happens.
    public mutating func send(_ message: ClientMessage, next: ClientMessage? = nil) -> ClientAction {
        let env = message.envelope
        if let lost = lostStarted {
            lostStarted = nil
            if lost.id == message.id {
                return .done(Dictionary(env.recipients.map { ($0.id, lost.results[$0.id] ?? .deferred(SMTPReply(451, .connectionDropped,
                    "lost connection with \(config.host) before MAIL was answered"))) }, uniquingKeysWith: { a, _ in a }))
            }
        }
        let early = started
        started = nil
        guard phase == .idle else {
            return .done(all(env, .deferred(SMTPReply(451, .connectionDropped, "connection with \(config.host) is not open for mail"))))
        }
        if let early, early.id != message.id {
            // Not the message whose commands went out: the server may be
            // waiting for that one's content. Nothing else can be sent here.
            broken = true
            return .done(all(env, .deferred(SMTPReply(451, .connectionDropped,
                                                      "connection with \(config.host) reset: message \(early.id) was started but not sent"))))
        }
        if early == nil, broken {
            // A 421 or a lost reply: the connection carries nothing more.
            return .done(all(env, .deferred(SMTPReply(451, .connectionDropped, "connection with \(config.host) is closing"))))
        }
        if early == nil, let refusal = ClientProtocol.preflight(env, capabilities) { return .done(all(env, .bounced(refusal))) }
        // A message that has made too many hops is looping: bounce it.
        if message.hops > config.maxHops {
            if early != nil { broken = true } // the server waits for this message's content
            return .done(all(env, .bounced(SMTPReply(554, .routingLoop, "too many hops (\(message.hops) Received: headers); mail loop?"))))
        }
        phase = .transaction
        if let early {
            // Sent with the previous message's content; the replies are in.
            transaction = Transaction(message: message, next: next, stage: .data, mail: early.mail, rcpts: early.rcpts, data: early.data)
            return evaluate()
        }
        let commands = ClientSession.commands(env, capabilities)
        if capabilities.pipelining {
            // RFC 2920: RSET, MAIL, RCPT… and DATA in one group.
            let rset = openTransaction
            transaction = Transaction(message: message, next: next, stage: .group(rset: rset))
            return expect((rset ? ["RSET"] : []) + commands + ["DATA"],
                          (rset ? [.rset] : []) + ClientSession.steps(env) + [.data])
        }
        if openTransaction {
            transaction = Transaction(message: message, next: next, stage: .rset)
            return expect(["RSET"], [.rset])
        }
        transaction = Transaction(message: message, next: next, stage: .mail)
        return expect([commands[0]], [.mail])
    }

    private func all(_ env: ClientEnvelope, _ outcome: RecipientOutcome) -> [Int64: RecipientOutcome] {
        Dictionary(env.recipients.map { ($0.id, outcome) }, uniquingKeysWith: { a, _ in a })
    }

    /// A transaction's commands before DATA: MAIL, then RCPT for each recipient.
    static func commands(_ env: ClientEnvelope, _ caps: ServerCapabilities) -> [String] {
        [ClientProtocol.mailCommand(env, caps)] + env.recipients.map { ClientProtocol.rcptCommand($0, caps) }
    }

    /// What MAIL and each RCPT of a transaction answer.
    static func steps(_ env: ClientEnvelope) -> [ClientStep] {
        [.mail] + Array(repeating: .rcpt, count: env.recipients.count)
    }

    private mutating func transactionStep(_ replies: [SMTPReply]) -> ClientAction {
        guard var t = transaction else { return fail(.protocolError("no transaction")) }
        let env = t.message.envelope
        switch t.stage {
        case .group(let rset):
            var r = replies[...]
            if rset { r = r.dropFirst() }
            t.mail = r.first
            t.rcpts = Array(r.dropFirst().prefix(env.recipients.count))
            t.data = r.last
            transaction = t
            return evaluate()
        case .rset:
            t.stage = .mail
            transaction = t
            return expect([ClientProtocol.mailCommand(env, capabilities)], [.mail])
        case .mail:
            t.mail = replies[0]
            guard replies[0].code / 100 == 2, !env.recipients.isEmpty else {
                transaction = t
                return evaluate()
            }
            t.phaseName = "RCPT"
            t.stage = .rcpt(0)
            transaction = t
            return expect([ClientProtocol.rcptCommand(env.recipients[0], capabilities)], [.rcpt])
        case .rcpt(let i):
            t.rcpts.append(replies[0])
            if i + 1 < env.recipients.count {
                t.stage = .rcpt(i + 1)
                transaction = t
                return expect([ClientProtocol.rcptCommand(env.recipients[i + 1], capabilities)], [.rcpt])
            }
            guard t.rcpts.contains(where: { $0.code / 100 == 2 }) else {
                transaction = t
                return evaluate()
            }
            t.phaseName = "DATA"
            t.stage = .data
            transaction = t
            return expect(["DATA"], [.data])
        case .data:
            t.data = replies[0]
            transaction = t
            return evaluate()
        case .content(let nextStarted):
            // This message's reply counts even if the next one's group fails.
            for r in t.accepted { t.results[r.id] = RecipientOutcome.from(replies[0]) }
            openTransaction = false
            if nextStarted, let next = t.next {
                let n = next.envelope.recipients.count
                started = (next.id, replies[1], Array(replies[2..<(2 + n)]), replies[2 + n])
                openTransaction = replies[1].code / 100 == 2
            }
            return finish(t.results)
        case .endData:
            return finish(t.results)
        }
    }

    /// The replies to MAIL, RCPT… and DATA are in: outcomes for the refused
    /// recipients, and the content for the accepted ones.
    private mutating func evaluate() -> ClientAction {
        guard var t = transaction, let mail = t.mail else { return fail(.protocolError("no reply to MAIL")) }
        let env = t.message.envelope
        openTransaction = mail.code / 100 == 2
        guard mail.code / 100 == 2 else {
            t.results = all(env, RecipientOutcome.from(mail))
            return endWithoutContent(t)
        }
        for (i, r) in env.recipients.enumerated() {
            guard i < t.rcpts.count else {
                t.results[r.id] = .deferred(SMTPReply(451, .protocolError, "\(config.host) sent no reply to RCPT"))
                continue
            }
            if t.rcpts[i].code / 100 == 2 { t.accepted.append(r) } else { t.results[r.id] = RecipientOutcome.from(t.rcpts[i]) }
        }
        guard let data = t.data, !t.accepted.isEmpty else { return endWithoutContent(t) }
        guard data.code == 354 else {
            for r in t.accepted { t.results[r.id] = RecipientOutcome.from(data) }
            return finish(t.results)
        }
        t.phaseName = "end of data"
        // RFC 2920 §3.1: the content may begin a pipelined group, so the next
        // message's MAIL, RCPT… and DATA go out with this final dot: one
        // round trip per message instead of two.
        var then: [String] = []
        var steps: [ClientStep] = [.endOfData]
        if let next = t.next, capabilities.pipelining, ClientProtocol.preflight(next.envelope, capabilities) == nil {
            then = ClientSession.commands(next.envelope, capabilities) + ["DATA"]
            steps += ClientSession.steps(next.envelope) + [.data]
        }
        t.stage = .content(nextStarted: !then.isEmpty)
        transaction = t
        pending = steps
        got = []
        return .content(then: then, expecting: steps)
    }

    /// Nothing to send: a DATA the server accepted anyway gets a lone dot.
    private mutating func endWithoutContent(_ t: Transaction) -> ClientAction {
        var t = t
        guard t.data?.code == 354 else { return finish(t.results) }
        t.stage = .endData
        transaction = t
        pending = [.endOfData]
        got = []
        return .endData
    }

    private mutating func finish(_ results: [Int64: RecipientOutcome]) -> ClientAction {
        transaction = nil
        phase = .idle
        return .done(results)
    }

    private mutating func transactionFailed(_ fault: ClientFault, _ replies: [SMTPReply]) -> ClientAction {
        guard var t = transaction else { return .drop }
        let env = t.message.envelope
        broken = true
        started = nil
        if case .outOfStep(let step, let reply) = fault {
            // No reply on this session can be trusted now: every recipient
            // without a certain final reply is deferred (issue 15: a peer
            // answering pipelined commands out of order had 300 recipients
            // counted delivered on a 354).
            let deferral = SMTPReply(451, .protocolError,
                                     "\(config.host) answered \(step) with \"\(reply.keepingText(200))\": replies out of step with commands; connection closed")
            return finish(all(env, .deferred(deferral)))
        }
        switch t.stage {
        case .endData:
            return finish(t.results)
        case .content where !replies.isEmpty:
            // The final dot was answered; the next message's group was not,
            // or only in part: its replies that came settle what they can.
            for r in t.accepted { t.results[r.id] = RecipientOutcome.from(replies[0]) }
            openTransaction = false
            if replies.count > 1, case .content(nextStarted: true) = t.stage, let next = t.next {
                let partial = Transaction(message: next, next: nil, stage: .group(rset: false))
                lostStarted = (next.id, settleLost(partial, fault, Array(replies.dropFirst())))
            }
            return finish(t.results)
        default:
            return finish(settleLost(t, fault, replies))
        }
    }

    /// The outcomes of a transaction whose connection ended before all its
    /// replies came. The replies that did come are answers all the same (RFC
    /// 5321 §3.8: a server may answer 421 to any command and close): MAIL's
    /// refusal settles every recipient, an RCPT's refusal its recipient, and
    /// a 421 before the close is why the rest could not be tried, with its
    /// text (providers say "slow down" this way: issue 18). Otherwise the
    /// loss is temporary; a reply lost after the final dot may mean the
    /// message arrived (a possible duplicate).
    private func settleLost(_ t: Transaction, _ fault: ClientFault, _ replies: [SMTPReply]) -> [Int64: RecipientOutcome] {
        var results = t.results
        let env = t.message.envelope
        var mail = t.mail
        var rcpts = t.rcpts
        switch t.stage {
        case .group(let rset):
            let r = rset ? replies.dropFirst() : replies[...]
            mail = r.first
            rcpts = Array(r.dropFirst().prefix(env.recipients.count))
        case .mail:
            mail = replies.first
        case .rcpt:
            rcpts += replies
        default:
            break
        }
        if let mail, mail.code / 100 != 2 {
            for r in env.recipients where results[r.id] == nil { results[r.id] = RecipientOutcome.from(mail) }
            return results
        }
        let last = replies.last ?? [t.data, t.rcpts.last, t.mail].compactMap { $0 }.first
        let why: RecipientOutcome = last.flatMap { $0.code == 421 ? RecipientOutcome.from($0) : nil }
            ?? .deferred(SMTPReply(451, .connectionDropped, "lost connection with \(config.host) during \(t.phaseName): \(fault)"))
        for (i, r) in env.recipients.enumerated() where results[r.id] == nil {
            results[r.id] = i < rcpts.count && rcpts[i].code / 100 != 2 ? RecipientOutcome.from(rcpts[i]) : why
        }
        return results
    }

    // MARK: - Closing

    /// QUIT when the session is sane; a server waiting for content would
    /// read QUIT as content, so then the connection is dropped (the server
    /// discards the open transaction).
    public mutating func close() -> ClientAction {
        let sane = (phase == .idle || phase == .refused) && !broken && started?.data.code != 354
        started = nil
        lostStarted = nil
        guard sane else {
            phase = .closed
            return .drop
        }
        phase = .quitting
        pending = [.quit]
        got = []
        return .quit
    }
}
