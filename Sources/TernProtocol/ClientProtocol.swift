// The client side of SMTP as pure code: reply parsing (RFC 5321 §4.2),
// which replies may answer which command, EHLO capabilities, the MAIL/RCPT
// commands with their ESMTP parameters, dot-stuffing (RFC 5321 §4.5.2), the
// mapping of replies to per-recipient outcomes, and the values the client
// session's dialog works with (ClientSession.swift: the dialog itself).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// Assembles reply lines into replies, enhanced codes split off (RFC 2034).
public struct ReplyParser: Sendable {
    private var code: Int? = nil
    private var lines: [String] = []
    private var bytes = 0

    public init() {}

    public enum Failure: Error, Equatable {
        case malformed(String)
        /// More than `maxLines` lines or `maxBytes` octets in one reply: a
        /// hostile or broken server (endless `250-` lines) is cut off
        /// instead of buffered until the reply timeout.
        case tooLong
    }

    /// Lines in one reply (an EHLO reply has a dozen; 100 is generous).
    public static let maxLines = 100
    /// Octets of text in one reply.
    public static let maxBytes = 16 * 1024
    /// Octets of a reply's text that are stored (`attempt.text`,
    /// `recipient.last_text`, event details and DSNs): the rest is cut, marked "…".
    public static let keptTextBytes = 1000

    /// Feeds one line (without CRLF); returns a reply when this line ends one.
    /// Reads the line's UTF-8 in place: a delivery parses four replies per
    /// message, and arrays and substrings per line showed in the profile.
    public mutating func feed(_ line: String) throws -> SMTPReply? {
        var line = line
        let head: (code: Int, separator: UInt8)? = line.withUTF8 { b in
            guard b.count >= 3 else { return nil }
            let d0 = b[0] &- 48, d1 = b[1] &- 48, d2 = b[2] &- 48
            guard d0 <= 9, d1 <= 9, d2 <= 9 else { return nil }
            let c = Int(d0) * 100 + Int(d1) * 10 + Int(d2)
            guard (200...599).contains(c) else { return nil }
            return (c, b.count > 3 ? b[3] : 32)
        }
        guard let (c, separator) = head else { throw Failure.malformed(line) }
        if let current = code, current != c { throw Failure.malformed(line) }
        code = c
        guard separator == 32 || separator == UInt8(ascii: "-") else { throw Failure.malformed(line) }
        bytes += line.utf8.count
        guard lines.count < ReplyParser.maxLines, bytes <= ReplyParser.maxBytes else { throw Failure.tooLong }
        // The text goes to logs, rows and bounces: no control characters.
        lines.append(line.utf8.count > 4 ? String(line[line.utf8.index(line.startIndex, offsetBy: 4)...]).escapingControlCharacters() : "")
        if separator == UInt8(ascii: "-") { return nil }
        defer { code = nil; lines = []; bytes = 0 }
        return ReplyParser.make(c, lines)
    }

    static func make(_ code: Int, _ lines: [String]) -> SMTPReply {
        // The enhanced code, when present, starts every line; keep it once.
        guard let first = lines.first, let (e, _) = EnhancedStatus.prefix(of: first), e.klass == code / 100 else {
            return SMTPReply(code, nil, lines: lines.isEmpty ? [""] : lines)
        }
        let texts = lines.map { l in
            guard let (_, rest) = EnhancedStatus.prefix(of: l) else { return l }
            return String(l[rest...])
        }
        return SMTPReply(code, e, lines: texts)
    }
}

extension SMTPReply {
    /// The reply with its lines cut to `limit` octets of text in all (whole
    /// lines kept while they fit, the cut marked with "…"), so that what a
    /// remote server says cannot grow rows and bounces without bound.
    public func keepingText(_ limit: Int) -> SMTPReply {
        var total = 0
        var kept: [String] = []
        for line in lines {
            let n = line.utf8.count
            if total + n > limit {
                kept.append(line.prefix(utf8Octets: max(0, limit - total)) + "…")
                return SMTPReply(code, enhanced, lines: kept)
            }
            total += n
            kept.append(line)
        }
        return self
    }
}

/// What a reply answers: the client checks each reply against its command.
public enum ClientStep: Sendable, Equatable {
    case greeting, ehlo, helo, startTLS, mail, rcpt, data, endOfData, rset, quit

    /// Whether `reply` can be the answer to this step (RFC 5321 §4.3.2's
    /// sequences). A reply that cannot means the session is out of step
    /// (a server that answers pipelined commands out of order, or says
    /// things nobody asked): the client must stop trusting its replies.
    /// - DATA is answered 354 or an error, never 2xx;
    /// - nothing but DATA is answered 3xx;
    /// - the end of data is not answered with an address status (X.1.Y:
    ///   that is a MAIL or RCPT reply arriving in its place).
    public func accepts(_ reply: SMTPReply) -> Bool {
        let klass = reply.code / 100
        switch self {
        case .greeting, .startTLS:
            return reply.code == 220 || klass == 4 || klass == 5
        case .data:
            return reply.code == 354 || klass == 4 || klass == 5
        case .endOfData:
            if klass == 2, let e = reply.enhanced, e.subject == 1 { return false }
            return klass == 2 || klass == 4 || klass == 5
        case .ehlo, .helo, .mail, .rcpt, .rset:
            return klass == 2 || klass == 4 || klass == 5
        case .quit:
            return true
        }
    }
}

/// Why an exchange ended without all its replies.
public enum ClientFault: Error, Equatable, CustomStringConvertible {
    case timeout
    case closed
    case protocolError(String)
    /// A reply that cannot answer the command it came for (see ClientStep).
    case outOfStep(ClientStep, SMTPReply)

    public var description: String {
        switch self {
        case .timeout: return "timeout"
        case .closed: return "connection closed"
        case .protocolError(let s): return "protocol error: \(s)"
        case .outOfStep(let step, let reply): return "reply out of step with \(step): \(reply.keepingText(200))"
        }
    }
}

/// When to use STARTTLS (RFC 3207).
public enum TLSPolicy: String, Sendable, CaseIterable {
    /// Never.
    case none
    /// When offered, without checking the certificate; plaintext when not
    /// offered or when the handshake fails (opportunistic, RFC 7435).
    case may
    /// Always, without checking the certificate; defer otherwise.
    case require
    /// Always, with the certificate checked against trusted roots and the MX name; defer otherwise.
    case verify
}

/// One message as the session sends it (the content stays with the caller).
public struct ClientMessage: Sendable {
    public var id: Int64
    public var envelope: ClientEnvelope
    /// `Received:` fields in its header (a loop past the limit is bounced
    /// instead of sent); checked when the message itself is sent.
    public var hops: Int

    public init(id: Int64, envelope: ClientEnvelope, hops: Int = 0) {
        self.id = id
        self.envelope = envelope
        self.hops = hops
    }
}

/// Why a session could not be opened.
public enum ClientOpenFailure: Sendable, Equatable {
    /// Try the next hop; the reply is what to record if none is left.
    case failure(SMTPReply)
    /// STARTTLS was tried and failed (`may` retries the hop in plaintext).
    case tlsFailure(SMTPReply)
    /// The server is ourselves (it greets or answers EHLO with our name).
    case loop(SMTPReply)
}

public enum ClientAction: Sendable, Equatable {
    /// Write these lines (none: only wait) and read one reply per step.
    case exchange([String], expecting: [ClientStep])
    /// Write the current message's content (dot-stuffed, with its final
    /// dot), then these lines, in one write; one reply per step.
    case content(then: [String], expecting: [ClientStep])
    /// Write a lone "." ending a DATA the server accepted but that has
    /// nothing to carry; its reply is read and ignored.
    case endData
    /// Put TLS on the connection, then call `tlsStarted()`.
    case startTLS
    /// The session is open: messages may be sent.
    case ready
    /// Opening failed: QUIT first (the session is sane), or drop the connection.
    case failed(ClientOpenFailure, quit: Bool)
    /// The message is done: an outcome for every recipient of its envelope.
    case done([Int64: RecipientOutcome])
    /// Exchange QUIT, then close.
    case quit
    /// Close without QUIT.
    case drop
}

/// What a server offered in its EHLO reply.
public struct ServerCapabilities: Sendable, Equatable {
    public var esmtp: Bool
    public var keywords: [String: String]

    public init(ehloReply: SMTPReply) {
        esmtp = true
        var k: [String: String] = [:]
        for line in ehloReply.lines.dropFirst() {
            let parts = line.split(separator: " ", maxSplits: 1)
            guard let key = parts.first else { continue }
            k[key.uppercased()] = parts.count > 1 ? String(parts[1]) : ""
        }
        keywords = k
    }

    /// After HELO: nothing.
    public init() {
        esmtp = false
        keywords = [:]
    }

    public func has(_ keyword: String) -> Bool { keywords[keyword] != nil }
    public var pipelining: Bool { has("PIPELINING") }
    public var dsn: Bool { has("DSN") }
    public var smtputf8: Bool { has("SMTPUTF8") }
    public var eightBitMIME: Bool { has("8BITMIME") }
    public var startTLS: Bool { has("STARTTLS") }
    /// RFC 1870: the fixed limit, when one was given (0 means none).
    public var sizeLimit: Int? {
        guard let v = keywords["SIZE"], let n = Int(v.trimmingCharacters()), n > 0 else { return nil }
        return n
    }
}

extension String {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}

/// One recipient as the client sends it.
public struct ClientRecipient: Sendable, Equatable {
    public var id: Int64
    public var address: String
    public var notify: String?
    /// Stored form `type;address`.
    public var orcpt: String?
    public init(id: Int64, address: String, notify: String?, orcpt: String?) {
        self.id = id
        self.address = address
        self.notify = notify
        self.orcpt = orcpt
    }
}

/// The envelope of one outbound transaction.
public struct ClientEnvelope: Sendable {
    public var mailFrom: String
    public var size: Int
    public var bodyType: String?
    public var smtputf8: Bool
    public var ret: String?
    public var envID: String?
    public var recipients: [ClientRecipient]

    public init(mailFrom: String, size: Int, bodyType: String?, smtputf8: Bool, ret: String?, envID: String?, recipients: [ClientRecipient]) {
        self.mailFrom = mailFrom
        self.size = size
        self.bodyType = bodyType
        self.smtputf8 = smtputf8
        self.ret = ret
        self.envID = envID
        self.recipients = recipients
    }

    /// True when an address is non-ASCII (RFC 6531 needs the server's SMTPUTF8).
    public var needsSMTPUTF8: Bool {
        smtputf8 || !([mailFrom] + recipients.map(\.address)).allSatisfy { $0.unicodeScalars.allSatisfy(\.isASCII) }
    }
}

/// The outcome for one recipient of one attempt.
public enum RecipientOutcome: Sendable, Equatable {
    case delivered(SMTPReply)
    case deferred(SMTPReply)
    case bounced(SMTPReply)

    public var reply: SMTPReply {
        switch self { case .delivered(let r), .deferred(let r), .bounced(let r): return r }
    }

    /// 2xx delivered, 4xx deferred, 5xx bounced (RFC 5321 §4.2.1).
    public static func from(_ reply: SMTPReply) -> RecipientOutcome {
        if reply.code < 400 { return .delivered(reply) }
        if reply.code < 500 { return .deferred(reply) }
        return .bounced(reply)
    }
}

public enum ClientProtocol {
    /// A refusal decided before anything is sent (SIZE, SMTPUTF8), or nil.
    public static func preflight(_ env: ClientEnvelope, _ caps: ServerCapabilities) -> SMTPReply? {
        if let limit = caps.sizeLimit, env.size > limit {
            return SMTPReply(552, .messageTooBig, "Message of \(env.size) bytes exceeds the remote server's SIZE limit of \(limit)")
        }
        if env.needsSMTPUTF8 && !caps.smtputf8 {
            return SMTPReply(553, .nonASCIINotPermitted, "Message needs SMTPUTF8, which the remote server does not offer")
        }
        return nil
    }

    /// `MAIL FROM:<…>` with the parameters this server understands.
    public static func mailCommand(_ env: ClientEnvelope, _ caps: ServerCapabilities) -> String {
        var s = "MAIL FROM:<\(env.mailFrom)>"
        guard caps.esmtp else { return s }
        if caps.has("SIZE") { s += " SIZE=\(env.size)" }
        if env.bodyType == "8BITMIME" && caps.eightBitMIME { s += " BODY=8BITMIME" }
        if env.needsSMTPUTF8 && caps.smtputf8 { s += " SMTPUTF8" }
        if caps.dsn {
            if let r = env.ret { s += " RET=\(r)" }
            if let e = env.envID { s += " ENVID=\(XText.encode(e))" }
        }
        return s
    }

    /// The first word of a reply's first line: the name a server greets
    /// with or answers EHLO with (RFC 5321 §4.1.1.1, §4.2).
    public static func firstWord(_ reply: SMTPReply) -> String {
        String((reply.lines.first ?? "").prefix { $0 != " " })
    }

    /// `RCPT TO:<…>`, passing NOTIFY and ORCPT on to a DSN server (RFC 3461 §5.2).
    public static func rcptCommand(_ r: ClientRecipient, _ caps: ServerCapabilities) -> String {
        var s = "RCPT TO:<\(r.address)>"
        guard caps.dsn else { return s }
        if let n = r.notify, !n.isEmpty { s += " NOTIFY=\(n)" }
        if let o = r.orcpt, let semi = o.firstIndex(of: ";") {
            s += " ORCPT=\(o[..<semi]);\(XText.encode(String(o[o.index(after: semi)...])))"
        }
        return s
    }

    /// The message as DATA text: CRLF line ends (a bare LF or a bare CR
    /// becomes CRLF, RFC 5321 §2.3.8: the client never sends either alone),
    /// leading dots doubled (§4.5.2), and the terminating `.`.
    public static func dataText(_ body: some Collection<UInt8>) -> [UInt8] {
        // Byte by byte through a generic iterator costs a witness call per
        // byte (Data from another module is not specialised): scan contiguous
        // memory and copy whole lines instead.
        if let out = body.withContiguousStorageIfAvailable({ dataText(UnsafeRawBufferPointer($0)) }) { return out }
        return Array(body).withUnsafeBytes { dataText($0) }
    }

    static func dataText(_ p: UnsafeRawBufferPointer) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(p.count + p.count / 50 + 8)
        writeDataText(p, into: &out)
        return out
    }

    /// The DATA text written straight into `out` (the client's outgoing
    /// buffer): no intermediate copy of a large message.
    /// With `final` false, `p` is a piece of the message that ends with a
    /// line feed (see `piece`) and no terminating `.` is written.
    public static func dataText(_ p: UnsafeRawBufferPointer, into out: inout ByteBuffer, final: Bool = true) {
        writeDataText(p, into: &out, final: final)
    }

    /// The end of the next piece of at most about `size` bytes of `p` from
    /// `start` (a line start): just after a line feed, so that pieces
    /// stuffed one by one make the same text as the whole; `p.count` for
    /// the last piece (or a line longer than `size`, taken whole).
    public static func piece(of p: UnsafeRawBufferPointer, from start: Int, size: Int) -> Int {
        guard p.count - start > size, let base = p.baseAddress else { return p.count }
        // The last line feed at or before start + size, else the first after it.
        var k = start + size - 1
        while k >= start, p[k] != 10 { k -= 1 }
        if k >= start { return k + 1 }
        if let lf = memchr(base + start + size, 10, p.count - start - size) { return base.distance(to: UnsafeRawPointer(lf)) + 1 }
        return p.count
    }

    static func writeDataText<Out: DataTextOutput>(_ p: UnsafeRawBufferPointer, into out: inout Out, final: Bool = true) {
        guard let base = p.baseAddress else { if final { out.put(".\r\n") }; return }
        let start = out.written
        var i = 0 // always at the start of a line
        while i < p.count {
            let j = p.firstLineFeed(from: i) ?? p.count
            // The line's own CR before its LF; any other CR is bare.
            let end = j < p.count && j > i && p[j - 1] == 13 ? j - 1 : j
            var k = i
            while true {
                if k < end && p[k] == UInt8(ascii: ".") { out.put(".") }
                guard k < end, let cr = memchr(base + k, 13, end - k) else {
                    out.put(UnsafeRawBufferPointer(rebasing: p[k..<end]))
                    break
                }
                let c = base.distance(to: UnsafeRawPointer(cr))
                out.put(UnsafeRawBufferPointer(rebasing: p[k..<c]))
                out.put("\r\n") // a bare CR ends a line of its own
                k = c + 1
            }
            if j == p.count { break }
            out.put("\r\n")
            i = j + 1
        }
        guard final else { return }
        if out.written > start && !out.endsWithCRLF { out.put("\r\n") }
        out.put(".\r\n")
    }
}

/// Where the DATA text goes: an array (tests, fuzzing) or the client's buffer.
protocol DataTextOutput {
    mutating func put(_ bytes: UnsafeRawBufferPointer)
    mutating func put(_ text: StaticString)
    /// The last two bytes are CRLF.
    var endsWithCRLF: Bool { get }
    /// Bytes written so far.
    var written: Int { get }
}

extension Array: DataTextOutput where Element == UInt8 {
    mutating func put(_ bytes: UnsafeRawBufferPointer) { append(contentsOf: bytes) }
    mutating func put(_ text: StaticString) {
        text.withUTF8Buffer { append(contentsOf: $0) }
    }
    var endsWithCRLF: Bool { count >= 2 && self[count - 2] == 13 && self[count - 1] == 10 }
    var written: Int { count }
}

extension ByteBuffer: DataTextOutput {
    mutating func put(_ bytes: UnsafeRawBufferPointer) { writeBytes(bytes) }
    mutating func put(_ text: StaticString) { writeStaticString(text) }
    var endsWithCRLF: Bool {
        readableBytes >= 2 && getInteger(at: writerIndex - 2, as: UInt16.self) == 0x0D0A
    }
    var written: Int { writerIndex }
}
