// The SMTP server session (RFC 5321 §3-4, with PIPELINING RFC 2920, SIZE
// RFC 1870, 8BITMIME RFC 6152, SMTPUTF8 RFC 6531, ENHANCEDSTATUSCODES
// RFC 2034, CHUNKING RFC 3030, DSN RFC 3461) as a pure state machine: it
// receives frames and returns what to do. The listener carries the actions
// out; nothing here touches a socket, a clock or the store.

import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Limits and identity for one session.
public struct SessionConfig: Sendable {
    public var hostname: String
    public var maxMessageSize: Int = 26_214_400
    public var maxRecipients: Int = 1000
    /// RFC 5321 §4.5.3.1.4: 512 octets including CRLF.
    public var maxCommandLine: Int = 512
    /// RFC 5321 §4.5.3.1.6: 1000 octets including CRLF.
    public var maxTextLine: Int = 1000
    /// Error replies before the session is closed with 421.
    public var maxErrors: Int = 20
    /// Recipients past `maxRecipients` answered 452 without counting as
    /// errors (Postfix's smtpd_recipient_overshoot_limit).
    public var recipientOvershootLimit: Int = 1000
    public var relay: RelayPolicy = RelayPolicy()
    /// Valid recipients of relay domains (nil: every recipient of a relay domain is accepted).
    public var recipients: RecipientTable? = nil
    /// STARTTLS is offered (a certificate is configured).
    public var startTLS = false
    /// What the listener is for: relay rules, or submission with AUTH required.
    public var role: ListenerRole = .relay
    /// An Authenticator is configured, so AUTH can be offered (RFC 4954).
    public var authEnabled = false
    /// Offer AUTH without TLS to loopback clients (never to others).
    public var plaintextAuthOnLoopback = false
    /// What a message line ending in a bare LF gets (a bare CR is always refused).
    public var bareNewline: BareNewlinePolicy = .normalize
    /// NOOP, VRFY, HELP, RSET and EXPN a client may send before each one
    /// also counts as an error (Postfix's smtpd_junk_command_limit); the
    /// count starts again with each accepted message.
    public var maxJunkCommands: Int = 100
    /// Command lines in one connection before it is closed with 421.
    public var maxCommands: Int = 100_000

    public init(hostname: String) { self.hostname = hostname }
}

/// How DATA and BDAT text with a line that ends in a bare LF is taken.
public enum BareNewlinePolicy: String, Sendable, CaseIterable {
    /// Stored as if the line ended in CRLF (Postfix 3.9's
    /// `smtpd_forbid_bare_newline = normalize`); only <CRLF>.<CRLF> on the
    /// raw stream ends DATA, and the stored body is relayed dot-stuffed, so
    /// no line of it can end a message or start a command downstream.
    case normalize
    /// The whole message is refused with 550 5.5.2 (RFC 5321 §2.3.8).
    case reject
}

/// Who is on the other end.
public struct ClientInfo: Sendable {
    public var address: IPAddress?
    /// As shown in `Received:` and stored in `message.client_address`.
    public var addressText: String
    public var trusted: Bool
    /// The client's network as per-client limits count it (an IPv4 address,
    /// an IPv6 /64 by default: one host has a whole /64 to pick from).
    public var network: String

    public init(address: IPAddress?, addressText: String, trusted: Bool, network: String? = nil) {
        self.address = address
        self.addressText = addressText
        self.trusted = trusted
        self.network = network ?? address.map { $0.masked(ipv4Prefix: 32, ipv6Prefix: 64).description } ?? addressText
    }

    public var isLoopback: Bool {
        guard let ip = address?.unmapped else { return false }
        return IPNetwork.loopback.contains { $0.contains(ip) }
    }
}

public struct EnvelopeRecipient: Sendable, Hashable {
    public var mailbox: Mailbox
    public var notify: Notify?
    public var orcpt: OriginalRecipient?

    public init(mailbox: Mailbox, notify: Notify? = nil, orcpt: OriginalRecipient? = nil) {
        self.mailbox = mailbox
        self.notify = notify
        self.orcpt = orcpt
    }
}

/// One accepted transaction, ready for intake.
public struct Envelope: Sendable {
    public var clientAddress: String
    public var helo: String
    /// `SMTP`, `ESMTP` or `UTF8SMTP` (RFC 3848 / RFC 6531 §3.7.3), for `Received:`.
    public var protocolName: String
    /// nil for the null reverse-path.
    public var mailFrom: Mailbox?
    public var parameters: MailParameters
    public var recipients: [EnvelopeRecipient]
    /// The TLS protocol the message came over, if any.
    public var tls: String? = nil
    /// The account that authenticated (RFC 4954), if any.
    public var authUser: String? = nil

    public init(clientAddress: String, helo: String, protocolName: String, mailFrom: Mailbox?,
                parameters: MailParameters, recipients: [EnvelopeRecipient]) {
        self.clientAddress = clientAddress
        self.helo = helo
        self.protocolName = protocolName
        self.mailFrom = mailFrom
        self.parameters = parameters
        self.recipients = recipients
    }
}

public enum SessionAction: Sendable {
    /// Write these replies; close the connection afterwards when `close`.
    case reply([SMTPReply], close: Bool)
    /// Write this 220, drop any input already buffered (RFC 3207 §4.2, the
    /// CVE-2011-0411 class of injection), then start the TLS handshake; call
    /// `tlsEstablished` once it completes.
    case startTLS(SMTPReply)
    /// Hand the message to intake; call `commitFinished` with the result, and
    /// read no further frames until then.
    case commit(Envelope, body: ByteBuffer)
    /// Check these credentials; call `authFinished` with the outcome, and read
    /// no further frames until then. Never log the credentials.
    case authenticate(Credentials, SASLMechanism)
}

/// What intake made of a transaction.
public enum CommitOutcome: Sendable {
    case accepted(queueID: String)
    case rejected(SMTPReply)
}

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
        case closed
    }

    enum DataError { case tooBig, lineTooLong, bareNewline, bareCR, nul, noMemory }
    enum AuthStep: Equatable { case plain, loginUser, loginPassword(String) }

    public private(set) var state: State = .greeting
    public let config: SessionConfig
    public let client: ClientInfo

    private var helo: String? = nil
    private var esmtp = false
    private var mailFrom: SMTPPath? = nil
    private var mailParams = MailParameters()
    private var recipients: [EnvelopeRecipient] = []
    private var recipientKeys: Set<String> = []
    private var usedBDAT = false
    private var body = ByteBuffer()
    private var bodySize = 0
    private var dataError: DataError? = nil
    private var previousLineEndedCRLF = true
    private var pendingChunk: (reply: SMTPReply?, last: Bool)? = nil
    /// A BDAT chunk ended in CR: the next chunk must start with LF.
    private var chunkEndedInCR = false
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
    private var authStep: AuthStep? = nil

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
        case (.closed, _), (.committing, _), (.authenticating, _):
            return nil
        case (.auth, .line(let line, _)):
            return saslResponse(line)
        case (.auth, _):
            authStep = nil
            state = .ready
            return error(SMTPReply(500, .syntaxError, "Error: authentication exchange line too long"))
        case (.data, .line(let line, let ending)):
            return dataLine(line, ending)
        case (.data, .text(var run)):
            // Whole CRLF lines, none starting with "." (see SMTPFrame.text).
            previousLineEndedCRLF = true
            if run.withUnsafeReadableBytes({ $0.containsNUL }) { note(.nul) }
            appendText(&run, lineEnd: false)
            return nil
        case (.data, .overlongLine(let length, let ending)):
            bodySize += length
            note(bodySize > config.maxMessageSize ? .tooBig : .lineTooLong)
            body = ByteBuffer()
            // RFC 5321 §4.1.1.4: only <CRLF>.<CRLF> ends DATA, so a "." after
            // an overlong line that ended in a bare LF is text (SMTP smuggling).
            previousLineEndedCRLF = ending == .crlf
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

    private func ehloLines(_ name: String) -> [String] {
        [
            "\(config.hostname) greets \(name)",
            "PIPELINING",
            "SIZE \(config.maxMessageSize)",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN",
            "HELP",
        ] + (config.startTLS && tls == nil ? ["STARTTLS"] : [])
          + (authOffered && identity == nil ? ["AUTH " + SASLMechanism.allCases.map(\.rawValue).joined(separator: " ")] : [])
    }

    /// The handshake finished: RFC 3207 §4.2, the session starts over (the
    /// client must say EHLO again) and knows nothing from before TLS.
    public mutating func tlsEstablished(_ description: String) {
        resetTransaction()
        helo = nil
        esmtp = false
        identity = nil
        authStep = nil
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
        switch mechanism {
        case .plain:
            authStep = .plain
            if parts.count == 2 { return saslResponse(parts[1]) }
            return .reply([SMTPReply(334, nil, "")], close: false)
        case .login:
            authStep = .loginUser
            if parts.count == 2 { return saslResponse(parts[1]) } // the user name as initial response
            return .reply([SMTPReply(334, nil, "VXNlcm5hbWU6")], close: false) // "Username:"
        }
    }

    private mutating func saslResponse(_ line: ByteBuffer) -> SessionAction? {
        let text = line.getString(at: line.readerIndex, length: line.readableBytes) ?? "\u{0}"
        return saslResponse(Substring(text))
    }

    private mutating func saslResponse(_ text: Substring) -> SessionAction? {
        guard let step = authStep else { return nil }
        if text == "*" {
            endAuth()
            return error(SMTPReply(501, .securityError, "Authentication cancelled"))
        }
        // RFC 4954 §4: "=" is an empty initial response.
        guard let bytes = text == "=" ? [] : Base64.decode(text) else {
            endAuth()
            return error(SMTPReply(501, .syntaxError, "Cannot decode base64 response"))
        }
        switch step {
        case .plain:
            switch SASL.decodePlain(bytes) {
            case .success(let credentials):
                return startAuthentication(credentials, .plain)
            case .failure(.authzidNotPermitted):
                endAuth()
                return error(SMTPReply(535, .badCredentials, "Authentication credentials invalid (authorization identity not permitted)"))
            case .failure:
                endAuth()
                return error(SMTPReply(501, .syntaxError, "Malformed PLAIN response"))
            }
        case .loginUser:
            guard case .success(let user) = SASL.decodeLoginField(bytes) else {
                endAuth()
                return error(SMTPReply(501, .syntaxError, "Malformed LOGIN user name"))
            }
            authStep = .loginPassword(user)
            return .reply([SMTPReply(334, nil, "UGFzc3dvcmQ6")], close: false) // "Password:"
        case .loginPassword(let user):
            guard case .success(let password) = SASL.decodeLoginField(bytes) else {
                endAuth()
                return error(SMTPReply(501, .syntaxError, "Malformed LOGIN password"))
            }
            return startAuthentication(Credentials(username: user, password: password), .login)
        }
    }

    private mutating func startAuthentication(_ credentials: Credentials, _ mechanism: SASLMechanism) -> SessionAction {
        authStep = nil
        state = .authenticating
        return .authenticate(credentials, mechanism)
    }

    private mutating func endAuth() {
        authStep = nil
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
        if memoryTight { return .reply([SMTPServerSession.noMemory], close: false) }
        state = .data
        body = ByteBuffer()
        body.reserveCapacity(16 * 1024)
        bodySize = 0
        dataError = nil
        // RFC 5321 §4.1.1.4: the CRLF that ends the DATA command is the first
        // of <CRLF>.<CRLF> for an empty message; a bare LF is not. (Found by
        // the session fuzz target: "DATA<LF>.<CRLF>" ended the data.)
        previousLineEndedCRLF = commandEnding == .crlf
        return .reply([SMTPReply(354, nil, "End data with <CR><LF>.<CR><LF>")], close: false)
    }

    private mutating func dataLine(_ line: ByteBuffer, _ ending: LineEnding) -> SessionAction? {
        var line = line
        let isDot = line.readableBytes == 1 && line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: ".")
        // RFC 5321 §4.1.1.4: the end is <CRLF>.<CRLF> and nothing else, so a
        // <LF>.<CRLF> or <CRLF>.<LF> cannot end the message (SMTP smuggling).
        if isDot && ending == .crlf && previousLineEndedCRLF {
            return endOfData()
        }
        let (hasCR, hasNUL) = line.withUnsafeReadableBytes { ($0.contains(13), $0.containsNUL) }
        // RFC 5321 §2.3.8: a bare CR is refused whatever the policy; a bare
        // LF is refused or, by default, stored as CRLF (see BareNewlinePolicy).
        if hasCR { note(.bareCR) }
        if ending == .bareLF && config.bareNewline == .reject { note(.bareNewline) }
        // RFC 6152 §3: 8-bit data excludes NUL.
        if hasNUL { note(.nul) }
        previousLineEndedCRLF = ending == .crlf
        if line.readableBytes > 0, line.getInteger(at: line.readerIndex, as: UInt8.self) == UInt8(ascii: ".") {
            line.moveReaderIndex(forwardBy: 1) // RFC 5321 §4.5.2 transparency
        }
        appendText(&line, lineEnd: true)
        return nil
    }

    /// Adds DATA text to the body, and its CRLF when `lineEnd`; past the
    /// size limit the body is dropped and the rest only counted.
    private mutating func appendText(_ text: inout ByteBuffer, lineEnd: Bool) {
        bodySize += text.readableBytes + (lineEnd ? 2 : 0)
        if bodySize > config.maxMessageSize {
            note(.tooBig)
            body = ByteBuffer() // keep reading to the end, store nothing
        } else if dataError == nil {
            body.writeBuffer(&text)
            if lineEnd { body.writeStaticString("\r\n") }
        }
    }

    private mutating func endOfData() -> SessionAction? {
        if let e = dataError {
            resetTransaction()
            state = .ready
            return error(dataRefusal(e))
        }
        return startCommit()
    }

    /// RFC 5321 §4.5.3.1.10 / RFC 3463 4.3.1: a temporary refusal the client retries.
    static let noMemory = SMTPReply(452, .mailSystemFull, "Error: insufficient system resources for message text, try again later")

    /// Octets of message text held now (the listener counts them against
    /// its memory budget).
    public var bodyBytes: Int { body.readableBytes }

    /// The memory budget ran out while this message came in: its text is
    /// dropped, the rest read and discarded, and the end answered 452 4.3.1.
    public mutating func dropBodyForMemory() {
        guard state == .data || state == .chunk || (state == .mail && usedBDAT) else { return }
        note(.noMemory)
        body = ByteBuffer()
    }

    /// Records a fault in the message text; the first one is the reply,
    /// except that "too big" says more than "line too long".
    private mutating func note(_ e: DataError) {
        if dataError == nil || (e == .tooBig && dataError == .lineTooLong) { dataError = e }
    }

    /// Adds a piece of a BDAT chunk to the body under DATA's line rules:
    /// a bare CR and NUL are refused, a bare LF is refused or becomes CRLF.
    /// A CR at the end of a piece is judged by the first byte of the next.
    private mutating func appendChunk(_ piece: ByteBuffer) {
        let afterCR = chunkEndedInCR
        let scan = piece.withUnsafeReadableBytes { $0.scanLineEnds(afterCR: afterCR) }
        if scan.bareCR { note(.bareCR) }
        if scan.nul { note(.nul) }
        if scan.bareLF > 0 && config.bareNewline == .reject { note(.bareNewline) }
        guard dataError == nil else { body = ByteBuffer(); return }
        chunkEndedInCR = scan.endsInCR
        if scan.bareLF == 0 {
            var p = piece
            body.writeBuffer(&p)
            return
        }
        bodySize += scan.bareLF
        if bodySize > config.maxMessageSize { note(.tooBig); body = ByteBuffer(); return }
        piece.withUnsafeReadableBytes { raw in
            var start = 0
            for (i, byte) in raw.enumerated() where byte == 10 {
                let before: UInt8 = i > 0 ? raw[i - 1] : (afterCR ? 13 : 0)
                if before != 13 {
                    body.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start..<i]))
                    body.writeStaticString("\r")
                    start = i
                }
            }
            body.writeBytes(UnsafeRawBufferPointer(rebasing: raw[start...]))
        }
    }

    private func dataRefusal(_ e: DataError) -> SMTPReply {
            switch e {
            case .tooBig:
                return SMTPReply(552, .messageTooBig, "Message size exceeds fixed maximum message size")
            case .lineTooLong:
                return SMTPReply(500, .syntaxError, "Error: message text line longer than \(config.maxTextLine) octets")
            case .bareNewline:
                return SMTPReply(550, .syntaxError, "Error: bare <LF> in message text (RFC 5321 §2.3.8); message refused")
            case .bareCR:
                return SMTPReply(550, .syntaxError, "Error: bare <CR> in message text (RFC 5321 §2.3.8); message refused")
            case .nul:
                return SMTPReply(550, .contentError, "Error: NUL character in message text (RFC 6152 §3); message refused")
            case .noMemory:
                return SMTPServerSession.noMemory
            }
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
            refusal = SMTPServerSession.noMemory
        }
        if refusal == nil && !usedBDAT {
            usedBDAT = true
            body = ByteBuffer()
            bodySize = 0
            dataError = nil
            chunkEndedInCR = false
        }
        if refusal == nil {
            bodySize += size
            if bodySize > config.maxMessageSize {
                refusal = SMTPReply(552, .messageTooBig, "Message size exceeds fixed maximum message size")
                dataError = .tooBig
            }
        }
        pendingChunk = (refusal, last)
        if refusal == nil { body.reserveCapacity(bodySize) }
        if state == .mail { state = .chunk }
        return nil
    }

    private mutating func chunk(_ piece: ByteBuffer, isEnd: Bool) -> SessionAction? {
        guard let pending = pendingChunk else { return nil }
        if pending.reply == nil && dataError == nil { appendChunk(piece) }
        guard isEnd else { return nil }
        pendingChunk = nil
        if pending.reply == nil && pending.last && chunkEndedInCR { note(.bareCR) }
        if pending.reply == nil, let e = dataError {
            // BDAT text follows the same line rules as DATA text; the
            // transaction ends with the refusal.
            resetTransaction()
            state = .ready
            return error(dataRefusal(e))
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
        return ok(SMTPReply(250, .ok, "\(body.readableBytes) octets received"))
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
        let message = body
        body = ByteBuffer()
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
        body = ByteBuffer()
        bodySize = 0
        dataError = nil
        pendingChunk = nil
        chunkEndedInCR = false
        overshoot = 0
    }

    private func ok(_ reply: SMTPReply) -> SessionAction { .reply([reply], close: false) }

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
    private mutating func error(_ reply: SMTPReply) -> SessionAction {
        errorCount += 1
        if errorCount >= config.maxErrors {
            state = .closed
            return .reply([reply, SMTPReply(421, .tempSecurity, "\(config.hostname) Error: too many errors")], close: true)
        }
        return .reply([reply], close: false)
    }
}

/// What one BDAT piece holds in the way of line ends.
struct LineEndScan {
    /// LFs with no CR before them.
    var bareLF = 0
    /// A CR followed by anything but LF.
    var bareCR = false
    var nul = false
    /// The last byte is a CR (judged by the next piece).
    var endsInCR = false
}

extension UnsafeRawBufferPointer {
    var containsNUL: Bool {
        guard let base = baseAddress, count > 0 else { return false }
        return memchr(base, 0, count) != nil
    }

    /// Scans BDAT text for bare CR, bare LF and NUL; `afterCR` when the
    /// piece before ended in CR.
    func scanLineEnds(afterCR: Bool) -> LineEndScan {
        var scan = LineEndScan()
        var previous: UInt8 = afterCR ? 13 : 0
        for byte in self {
            if previous == 13 && byte != 10 { scan.bareCR = true }
            if byte == 10 && previous != 13 { scan.bareLF += 1 }
            if byte == 0 { scan.nul = true }
            previous = byte
        }
        scan.endsInCR = previous == 13
        return scan
    }
}
