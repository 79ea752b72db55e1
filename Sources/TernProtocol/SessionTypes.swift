// The values the server session works with: its configuration, who the
// client is, the envelope it hands to intake, and the actions it asks the
// listener to carry out.

import NIOCore

/// Limits and identity for one session.
public struct SessionConfig: Sendable {
    public var hostname: String
    /// Where a message's text is kept while it arrives (the listener's
    /// gives a large one a mapping of its own).
    public var textAllocator = ByteBufferAllocator()
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
    /// Ask the listener to check the sender of untrusted, unauthenticated
    /// clients before MAIL's reply (`.checkSender`): SPF refused at MAIL.
    public var checkSender = false

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
    /// The client is in a trusted network (its mail is ours to sign).
    public var trustedClient = false

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
    /// Check the sender (SPF at MAIL, opt-in); call `senderChecked` with the
    /// refusal or nil, and read no further frames until then.
    case checkSender(SMTPPath)
}

/// What intake made of a transaction.
public enum CommitOutcome: Sendable {
    case accepted(queueID: String)
    case rejected(SMTPReply)
}

extension SMTPServerSession {
    /// The EHLO reply: the extensions Tern offers (RFC 5321 §4.1.1.1).
    func ehloLines(_ name: String) -> [String] {
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
}
