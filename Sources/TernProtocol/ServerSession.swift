// The SMTP server session (RFC 5321 §3-4, with PIPELINING RFC 2920, SIZE
// RFC 1870, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531, ENHANCEDSTATUSCODES
// RFC 2034, CHUNKING RFC 3030, DSN RFC 3461) as a pure state machine: it
// receives frames and returns what to do. The listener carries the actions
// out; nothing here touches a socket, a clock or the store. DATA/BDAT text
// (MessageText) and AUTH exchanges (SASLExchange) are machines of their
// own that it delegates to; its values are in SessionTypes.swift.

import NIOCore

public struct SMTPServerSession: Sendable {
    public enum State: Sendable, Equatable {
        case greeting      // before HELO/EHLO
        case ready         // no transaction
        case mail          // after MAIL, collecting RCPTs
        case data          // reading DATA text
        case chunk         // reading a BDAT payload
        case committing    // waiting for intake
        case auth          // reading SASL responses (RFC 4954 §4)
        case authenticating // waiting for the Authenticator
        case checkingSender // waiting for the sender check (SPF at MAIL)
        case closed
    }


    public internal(set) var state: State = .greeting
    public let config: SessionConfig
    public let client: ClientInfo

    var helo: String? = nil
    private var esmtp = false
    var mailFrom: SMTPPath? = nil
    var mailParams = MailParameters()
    /// MAIL waiting for the sender check.
    var pendingMail: (SMTPPath, MailParameters)? = nil
    private var recipients: [EnvelopeRecipient] = []
    private var recipientKeys: Set<String> = []
    private var usedBDAT = false
    /// The message text of this transaction, from DATA or the first BDAT on.
    private var text: MessageText? = nil
    private var pendingChunk: (reply: SMTPReply?, last: Bool)? = nil
    /// How the last command line ended: a DATA command that ended in a bare
    /// LF has not given the CRLF that an immediate "." needs to end the data.
    private var commandEnding: LineEnding = .crlf
    public private(set) var errorCount = 0
    /// Set by the listener while the memory budget for message text is
    /// spent: DATA and BDAT are answered 452 4.3.1 until it is not.
    public var memoryTight = false
    private var junkCommands = 0
    private var commandCount = 0
    private var overshoot = 0
    /// The TLS protocol in use (nil in the clear), for `Received:`.
    public private(set) var tls: String? = nil
    /// The account this client authenticated as.
    public private(set) var identity: AuthIdentity? = nil
    private var sasl: SASLExchange? = nil

    public init(config: SessionConfig, client: ClientInfo) {
        self.config = config
        self.client = client
    }

    /// How the framer must read the next bytes.
    public var inputMode: SMTPFramer.Mode { state == .data ? .data : .command }

    /// True while a mail transaction is open (used for graceful shutdown).
    public var inTransaction: Bool { [.mail, .data, .chunk, .committing].contains(state) }

    /// AUTH is offered now: configured, and over TLS (or plaintext allowed for loopback).
    public var authOffered: Bool {
        config.authEnabled && (tls != nil || (config.plaintextAuthOnLoopback && client.isLoopback))
    }

    public func greeting() -> SMTPReply {
        SMTPReply(220, nil, "\(config.hostname) ESMTP Tern")
    }

    /// The reply for an idle or stalled client (RFC 5321 §4.5.3.2).
    public mutating func timedOut() -> SMTPReply {
        state = .closed
        return SMTPReply(421, .connectionDropped, "\(config.hostname) Error: timeout exceeded")
    }

    /// The reply sent to idle sessions when the server stops.
    public mutating func shuttingDown() -> SMTPReply {
        state = .closed
        return SMTPReply(421, .systemNotAccepting, "\(config.hostname) Service shutting down, try again later")
    }

    // MARK: - Input

    public mutating func receive(_ frame: SMTPFrame) -> SessionAction? {
        switch (state, frame) {
        case (.closed, _), (.committing, _), (.authenticating, _), (.checkingSender, _):
            return nil
        case (.auth, .line(let line, _)):
            return saslResponse(line)
        case (.auth, _):
            endAuth()
            return error(SMTPReply(500, .syntaxError, "Error: authentication exchange line too long"))
        case (.data, .line(let line, let ending)):
            return text!.line(line, ending) ? endOfData() : nil
        case (.data, .text(let run)):
            text!.run(run)
            return nil
        case (.data, .overlongLine(let length, let ending)):
            text!.overlongLine(length: length, ending: ending)
            return nil
        case (_, .chunk(let piece, let isEnd)):
            return chunk(piece, isEnd: isEnd)
        case (_, .overlongLine):
            return error(SMTPReply(500, .syntaxError, "Error: line too long"))
        case (_, .text):
            // The framer makes runs in DATA mode only, which follows the state.
            return error(SMTPReply(500, .syntaxError, "Error: unexpected message text"))
        case (_, .line(let line, let ending)):
            commandEnding = ending
            return command(line)
        }
    }

    /// The result of the commit started by `.commit`.
    public mutating func commitFinished(_ outcome: CommitOutcome) -> SessionAction {
        guard state == .committing else { return .reply([], close: false) }
        resetTransaction()
        state = .ready
        switch outcome {
        case .accepted(let queueID):
            junkCommands = 0 // a productive session may say NOOP and RSET again
            return .reply([SMTPReply(250, .ok, "Ok: queued as \(queueID)")], close: false)
        case .rejected(let reply):
            return .reply([reply], close: false)
        }
    }

    // MARK: - Commands

    private mutating func command(_ line: ByteBuffer) -> SessionAction? {
        commandCount += 1
        if commandCount > config.maxCommands {
            state = .closed
            return .reply([SMTPReply(421, .tempSecurity, "\(config.hostname) Error: too many commands in one session")], close: true)
        }
        let length = line.readableBytes + 2
        // RFC 5321 §4.1.1: commands are printable text and SP. A control
        // character (an EHLO name with ESC or TAB, a bare CR) is refused
        // before it can reach a log line, a header or a terminal.
        guard !line.withUnsafeReadableBytes({ $0.contains { $0 < 0x20 || $0 == 0x7F } }),
              let text = line.getString(at: line.readerIndex, length: line.readableBytes) else {
            return error(SMTPReply(500, .syntaxError, "Error: bad characters in command"))
        }
        if text.isEmpty { return error(SMTPReply(500, .syntaxError, "Error: bad syntax")) }
        let verb = text.prefix(while: { $0 != " " }).uppercased()
        // RFC 5321 §4.5.3.1.4, raised by RFC 1870/3461/4954 for MAIL and RCPT parameters.
        let allowance = verb == "MAIL" ? SMTPFramer.extensionAllowance : verb == "RCPT" ? 500 : 0
        if length > config.maxCommandLine + allowance {
            return error(SMTPReply(500, .syntaxError, "Error: line too long"))
        }
        switch CommandParser.parse(Substring(text), esmtp: esmtp || helo == nil) {
        case .failure(let e):
            if verb == "BDAT" { return error(e.reply) } // no payload follows an unparsable BDAT
            return error(e.reply)
        case .success(let cmd):
            return handle(cmd)
        }
    }

    private mutating func handle(_ cmd: SMTPCommand) -> SessionAction? {
        switch cmd {
        case .ehlo(let name):
            resetTransaction()
            helo = name
            esmtp = true
            state = .ready
            return ok(lines: ehloLines(name))
        case .helo(let name):
            resetTransaction()
            helo = name
            esmtp = false
            state = .ready
            return .reply([SMTPReply(250, nil, config.hostname)], close: false)
        case .mail(let path, let params):
            return mail(path, params)
        case .rcpt(let path, let params):
            return rcpt(path, params)
        case .data:
            return data()
        case .bdat(let size, let last):
            return bdat(size: size, last: last)
        case .rset:
            resetTransaction()
            if state != .greeting { state = .ready }
            return junk(SMTPReply(250, .ok, "Ok"))
        case .noop:
            return junk(SMTPReply(250, .ok, "Ok"))
        case .quit:
            state = .closed
            return .reply([SMTPReply(221, .ok, "Bye")], close: true)
        case .vrfy:
            // RFC 5321 §3.5.3: 252 when we will not verify but will attempt delivery.
            return junk(SMTPReply(252, .cannotVerify, "Cannot VRFY user, but will accept message and attempt delivery"))
        case .expn:
            junkCommands += 1
            return error(SMTPReply(502, .invalidCommand, "EXPN not available"))
        case .help:
            return junk(SMTPReply(214, .ok, lines: [
                "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                "See RFC 5321; Tern's README describes its extensions",
            ]))
        case .starttls:
            guard config.startTLS else { return error(SMTPReply(502, .invalidCommand, "Error: command not implemented")) }
            guard tls == nil else { return error(SMTPReply(503, .invalidCommand, "Error: TLS already active")) }
            guard helo != nil, esmtp else { return error(SMTPReply(503, .invalidCommand, "Error: send EHLO first")) }
            guard state == .ready else { return error(SMTPReply(503, .invalidCommand, "Error: STARTTLS inside a mail transaction")) }
            return .startTLS(SMTPReply(220, .ok, "Ready to start TLS"))
        case .auth(let arguments):
            return auth(arguments)
        }
    }

    /// The handshake finished: RFC 3207 §4.2, the session starts over (the
    /// client must say EHLO again) and knows nothing from before TLS.
    public mutating func tlsEstablished(_ description: String) {
        resetTransaction()
        helo = nil
        esmtp = false
        identity = nil
        sasl = nil
        tls = description
        state = .greeting
    }

    // MARK: - AUTH (RFC 4954)

    private mutating func auth(_ arguments: String) -> SessionAction? {
        guard config.authEnabled else { return error(SMTPReply(502, .invalidCommand, "Error: authentication not enabled")) }
        guard helo != nil, esmtp else { return error(SMTPReply(503, .invalidCommand, "Error: send EHLO first")) }
        guard identity == nil else { return error(SMTPReply(503, .invalidCommand, "Error: already authenticated")) }
        guard state == .ready else { return error(SMTPReply(503, .invalidCommand, "Error: AUTH not allowed in a mail transaction")) }
        guard authOffered else {
            return error(SMTPReply(538, .encryptionRequired, "Encryption required for requested authentication mechanism"))
        }
        let parts = arguments.split(separator: " ")
        guard (1...2).contains(parts.count) else {
            return error(SMTPReply(501, .invalidArguments, "Syntax: AUTH mechanism [initial-response]"))
        }
        guard let mechanism = SASLMechanism(rawValue: parts[0].uppercased()) else {
            return error(SMTPReply(504, .invalidArguments, "Unrecognized authentication type"))
        }
        state = .auth
        let (exchange, outcome) = SASLExchange.start(mechanism, initial: parts.count == 2 ? parts[1] : nil)
        sasl = exchange
        return authStep(outcome)
    }

    private mutating func saslResponse(_ line: ByteBuffer) -> SessionAction? {
        guard sasl != nil else { return nil }
        let text = line.getString(at: line.readerIndex, length: line.readableBytes) ?? "\u{0}"
        return authStep(sasl!.respond(Substring(text)))
    }

    /// Carries out what the SASL exchange said.
    private mutating func authStep(_ outcome: SASLExchange.Outcome) -> SessionAction {
        switch outcome {
        case .challenge(let reply):
            return .reply([reply], close: false)
        case .credentials(let credentials, let mechanism):
            sasl = nil
            state = .authenticating
            return .authenticate(credentials, mechanism)
        case .failed(let reply):
            endAuth()
            return error(reply)
        }
    }

    private mutating func endAuth() {
        sasl = nil
        state = .ready
    }

    /// The Authenticator's answer to `.authenticate`.
    public mutating func authFinished(_ outcome: AuthOutcome) -> SessionAction {
        guard state == .authenticating else { return .reply([], close: false) }
        state = .ready
        switch outcome {
        case .success(let id):
            identity = id
            return ok(SMTPReply(235, .authSucceeded, "Authentication successful"))
        case .failure:
            return error(SMTPReply(535, .badCredentials, "Authentication credentials invalid"))
        case .throttled:
            return error(SMTPReply(454, .tempSecurity, "Too many failed authentication attempts from your address, try again later"))
        case .unavailable:
            return .reply([SMTPReply(454, .tempSecurity, "Temporary authentication failure")], close: false)
        }
    }

    private mutating func mail(_ path: SMTPPath, _ params: MailParameters) -> SessionAction? {
        guard helo != nil else { return error(SMTPReply(503, .invalidCommand, "Error: send HELO/EHLO first")) }
        guard state == .ready else { return error(SMTPReply(503, .invalidCommand, "Error: nested MAIL command")) }
        if config.role.requiresAuth && identity == nil {
            return error(SMTPReply(530, .securityError, "Authentication required"))
        }
        if let size = params.size, size > config.maxMessageSize {
            // RFC 1870 §6.2: permanent, the message is larger than the fixed limit.
            return error(SMTPReply(552, .messageTooBig, "Message size exceeds fixed maximum message size"))
        }
        if case .mailbox(let m) = path, m.needsSMTPUTF8, !params.smtputf8 {
            return error(SMTPReply(553, .nonASCIINotPermitted, "Non-ASCII sender address requires SMTPUTF8"))
        }
        if let id = identity {
            // The account may only send as its own addresses (Postfix's reject_sender_login_mismatch).
            let sender: Mailbox?
            if case .mailbox(let m) = path { sender = m } else { sender = nil }
            if !id.mayUse(sender: sender) {
                return error(SMTPReply(553, .securityPolicy, "<\(sender?.address ?? "")>: Sender address not owned by user \(id.name)"))
            }
        }
        if config.checkSender, !client.trusted, identity == nil {
            pendingMail = (path, params)
            state = .checkingSender
            return .checkSender(path)
        }
        mailFrom = path
        mailParams = params
        state = .mail
        return ok(SMTPReply(250, .senderOK, "Ok"))
    }

    private mutating func rcpt(_ path: SMTPPath, _ params: RecipientParameters) -> SessionAction? {
        guard state == .mail else { return error(SMTPReply(503, .invalidCommand, "Error: need MAIL command")) }
        let mailbox: Mailbox
        switch path {
        case .null:
            return error(SMTPReply(501, .badDestinationSyntax, "Error: empty recipient"))
        case .postmaster:
            // RFC 5321 §4.1.1.3: <Postmaster> is always accepted.
            mailbox = Mailbox(localPart: "postmaster", domain: config.hostname)
        case .mailbox(let m):
            // RFC 6531 §3.4: UTF-8 addresses only in an SMTPUTF8 transaction.
            if m.needsSMTPUTF8 && !mailParams.smtputf8 {
                return error(SMTPReply(553, .nonASCIINotPermitted, "Non-ASCII recipient address requires SMTPUTF8"))
            }
            // An authenticated client may relay anywhere (RFC 6409 §4.3 leaves it to policy).
            if let refusal = config.relay.check(m, clientTrusted: client.trusted || identity != nil) {
                return error(refusal)
            }
            // Backscatter: an unknown recipient of a relay domain is refused
            // now, not bounced later to a sender who may be forged.
            if let table = config.recipients, config.relay.isRelayDomain(m.normalizedDomain), table.knows(m) == false {
                return error(SMTPReply(550, .badDestinationMailbox, "<\(m.address)>: Recipient address rejected: User unknown in relay recipient table"))
            }
            mailbox = m
        }
        if recipients.count >= config.maxRecipients {
            // RFC 5321 §4.5.3.1.10: 452 and the client sends the rest later;
            // a normal client does that, so it is not an error until it overshoots.
            let reply = SMTPReply(452, .tooManyRecipients, "Error: too many recipients")
            overshoot += 1
            return overshoot > config.recipientOvershootLimit ? error(reply) : .reply([reply], close: false)
        }
        // The same mailbox twice is one recipient (domains compare case-insensitively).
        if recipientKeys.insert(mailbox.localPart + "@" + mailbox.normalizedDomain).inserted {
            recipients.append(EnvelopeRecipient(mailbox: mailbox, notify: params.notify, orcpt: params.orcpt))
        }
        return ok(SMTPReply(250, .destinationOK, "Ok"))
    }

    private mutating func data() -> SessionAction? {
        guard state == .mail else {
            return error(SMTPReply(503, .invalidCommand, helo == nil ? "Error: send HELO/EHLO first" : "Error: need MAIL command"))
        }
        if usedBDAT { return error(SMTPReply(503, .invalidCommand, "Error: DATA after BDAT is not allowed")) }
        guard !recipients.isEmpty else { return error(SMTPReply(554, .invalidCommand, "Error: no valid recipients")) }
        if memoryTight { return .reply([MessageText.noMemory], close: false) }
        state = .data
        text = MessageText(data: config, commandEnding: commandEnding)
        return .reply([SMTPReply(354, nil, "End data with <CR><LF>.<CR><LF>")], close: false)
    }

    private mutating func endOfData() -> SessionAction? {
        if let refusal = text?.refusal {
            resetTransaction()
            state = .ready
            return error(refusal)
        }
        return startCommit()
    }

    /// Octets of message text held now (the listener counts them against
    /// its memory budget).
    public var bodyBytes: Int { text?.body.readableBytes ?? 0 }

    /// The memory budget ran out while this message came in: its text is
    /// dropped, the rest read and discarded, and the end answered 452 4.3.1.
    public mutating func dropBodyForMemory() {
        guard text != nil, state == .data || state == .chunk || state == .mail else { return }
        text!.dropForMemory()
    }

    private mutating func bdat(size: Int, last: Bool) -> SessionAction? {
        // The framer reads the payload whatever we answer; the reply waits for it.
        var refusal: SMTPReply? = nil
        if helo == nil || !esmtp {
            refusal = SMTPReply(503, .invalidCommand, "Error: BDAT requires EHLO")
        } else if state != .mail {
            refusal = SMTPReply(503, .invalidCommand, "Error: need MAIL command")
        } else if recipients.isEmpty {
            refusal = SMTPReply(554, .invalidCommand, "Error: no valid recipients")
        } else if memoryTight && !usedBDAT {
            refusal = MessageText.noMemory
        }
        if refusal == nil && !usedBDAT {
            usedBDAT = true
            text = MessageText(chunks: config)
        }
        if refusal == nil && !text!.announce(chunk: size) {
            refusal = SMTPReply(552, .messageTooBig, "Message size exceeds fixed maximum message size")
        }
        pendingChunk = (refusal, last)
        if state == .mail { state = .chunk }
        return nil
    }

    private mutating func chunk(_ piece: ByteBuffer, isEnd: Bool) -> SessionAction? {
        guard let pending = pendingChunk else { return nil }
        if pending.reply == nil { text?.chunk(piece) }
        guard isEnd else { return nil }
        pendingChunk = nil
        if pending.reply == nil && pending.last { text?.lastChunkEnded() }
        if pending.reply == nil, let refusal = text?.refusal {
            // BDAT text follows the same line rules as DATA text; the
            // transaction ends with the refusal.
            resetTransaction()
            state = .ready
            return error(refusal)
        }
        if let refusal = pending.reply {
            if state == .chunk {
                // A failed chunk ends the transaction; the client starts again with MAIL.
                resetTransaction()
                state = .ready
            }
            return error(refusal)
        }
        if pending.last { return startCommit() }
        state = .mail
        return ok(SMTPReply(250, .ok, "\(bodyBytes) octets received"))
    }

    private mutating func startCommit() -> SessionAction {
        let from: Mailbox?
        if case .mailbox(let m) = mailFrom { from = m } else { from = nil }
        // RFC 3848 / RFC 6531 §3.7.3: an S for TLS, an A for AUTH.
        let base = mailParams.smtputf8 ? "UTF8SMTP" : (esmtp ? "ESMTP" : "SMTP")
        let proto = base + (tls == nil ? "" : "S") + (identity == nil ? "" : "A")
        var envelope = Envelope(clientAddress: client.addressText, helo: helo ?? "", protocolName: proto,
                                mailFrom: from, parameters: mailParams, recipients: recipients)
        envelope.tls = tls
        envelope.authUser = identity?.name
        envelope.trustedClient = client.trusted
        let message = text?.body ?? ByteBuffer()
        text = nil
        state = .committing
        return .commit(envelope, body: message)
    }

    // MARK: - Helpers

    private mutating func resetTransaction() {
        mailFrom = nil
        mailParams = MailParameters()
        recipients = []
        recipientKeys = []
        usedBDAT = false
        text = nil
        pendingChunk = nil
        overshoot = 0
    }

    func ok(_ reply: SMTPReply) -> SessionAction { .reply([reply], close: false) }

    /// A reply to NOOP, VRFY, HELP or RSET: past the junk limit each one
    /// also counts as an error, so a client that only chatters is closed.
    private mutating func junk(_ reply: SMTPReply) -> SessionAction {
        junkCommands += 1
        if junkCommands > config.maxJunkCommands {
            errorCount += 1
            if errorCount >= config.maxErrors {
                state = .closed
                return .reply([reply, SMTPReply(421, .tempSecurity, "\(config.hostname) Error: too many errors")], close: true)
            }
        }
        return .reply([reply], close: false)
    }
    private func ok(lines: [String]) -> SessionAction { .reply([SMTPReply(250, nil, lines: lines)], close: false) }

    /// An error reply, counted; past the limit the session ends with 421.
    mutating func error(_ reply: SMTPReply) -> SessionAction {
        errorCount += 1
        if errorCount >= config.maxErrors {
            state = .closed
            return .reply([reply, SMTPReply(421, .tempSecurity, "\(config.hostname) Error: too many errors")], close: true)
        }
        return .reply([reply], close: false)
    }
}

