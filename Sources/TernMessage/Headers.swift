// RFC 5322 header access over raw message bytes: find the header block, read
// unfolded fields, and build the `Received:` trace field (RFC 5321 §4.4).
// Pure; called by intake (and later by DSN building).

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The header section of a message, read without copying the body.
public struct HeaderBlock: Sendable {
    /// Each field as (name, unfolded value), in order.
    public let fields: [(name: String, value: String)]
    /// Octets of the header section including the blank line (or the whole
    /// message when there is no body).
    public let length: Int

    /// Parses the header section at the start of `bytes`. Lines may end in
    /// CRLF or LF; a line that is not a field and not a continuation ends it.
    public init(_ bytes: some Collection<UInt8>) {
        // Contiguous bytes through the raw-buffer path: a generic walk called
        // from another module runs unspecialised, through witness tables for
        // every byte (2.8 % of the server's CPU at 20 sessions once).
        if let block = bytes.withContiguousStorageIfAvailable({ HeaderBlock(UnsafeRawBufferPointer($0)) }) {
            self = block
        } else {
            self = Array(bytes).withUnsafeBytes { HeaderBlock($0) }
        }
    }

    /// The same for raw bytes (intake's path).
    public init(_ bytes: UnsafeRawBufferPointer) {
        var fields: [(name: String, value: String)] = []
        length = HeaderBlock.forEachField(in: bytes) { name, value in
            fields.append((String(decoding: UnsafeRawBufferPointer(rebasing: bytes[name]), as: UTF8.self),
                           HeaderBlock.valueText(value, in: bytes)))
            return true
        }
        self.fields = fields
    }

    /// The grammar both readers share. Calls `field` with each field's name
    /// and the pieces of its value (the rest of its first line, then each
    /// continuation line whole: RFC 5322 §2.2.3 unfolding drops only the
    /// line ends) until it returns false. A blank line or a line that is
    /// neither a field nor a continuation ends the section. Returns the
    /// octets of the lines read, the blank line included.
    private static func forEachField(in bytes: UnsafeRawBufferPointer,
                                     _ field: (_ name: Range<Int>, _ value: [Range<Int>]) -> Bool) -> Int {
        guard let base = bytes.baseAddress else { return 0 }
        var name: Range<Int>? = nil
        var value: [Range<Int>] = []
        func flush() -> Bool {
            defer { name = nil; value.removeAll(keepingCapacity: true) }
            guard let n = name else { return true }
            return field(n, value)
        }
        var lineStart = 0
        while lineStart < bytes.count, let p = memchr(base + lineStart, 10, bytes.count - lineStart) {
            let lf = base.distance(to: UnsafeRawPointer(p))
            var end = lf
            if end > lineStart && bytes[end - 1] == 13 { end -= 1 }
            if end == lineStart { // the blank line
                _ = flush()
                return lf + 1
            }
            let first = bytes[lineStart]
            if first == 32 || first == 9 {
                guard name != nil else { break }
                value.append(lineStart..<end)
            } else if let colon = (lineStart..<end).first(where: { bytes[$0] == 58 }), colon > lineStart,
                      (lineStart..<colon).allSatisfy({ bytes[$0] >= 33 && bytes[$0] <= 126 }) {
                if !flush() { return lineStart }
                name = lineStart..<colon
                value.append((colon + 1)..<end)
            } else {
                break
            }
            lineStart = lf + 1
        }
        _ = flush()
        return lineStart
    }

    private static func valueText(_ pieces: [Range<Int>], in bytes: UnsafeRawBufferPointer) -> String {
        var value: [UInt8] = []
        for piece in pieces { value.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[piece])) }
        return String(decoding: value, as: UTF8.self).trimmingWhitespace()
    }

    /// `HeaderBlock(bytes).first(name)` without building every field: intake
    /// wants the Message-ID of every message, and making all fields strings
    /// cost more than the rest of its header work.
    public static func firstValue(_ name: String, in bytes: UnsafeRawBufferPointer) -> String? {
        let wanted = Array(name.utf8)
        var found: String? = nil
        _ = forEachField(in: bytes) { n, value in
            guard n.count == wanted.count,
                  zip(wanted, UnsafeRawBufferPointer(rebasing: bytes[n])).allSatisfy({ asciiLower($0) == asciiLower($1) }) else { return true }
            found = valueText(value, in: bytes)
            return false
        }
        return found
    }

    /// How many fields of the header section are called `name`: the hop
    /// count is the number of `Received:` fields (RFC 5321 §6.3: a loop is
    /// detected by counting them).
    public static func count(_ name: String, in bytes: UnsafeRawBufferPointer) -> Int {
        let wanted = Array(name.utf8)
        var n = 0
        _ = forEachField(in: bytes) { field, _ in
            if field.count == wanted.count,
               zip(wanted, UnsafeRawBufferPointer(rebasing: bytes[field])).allSatisfy({ asciiLower($0) == asciiLower($1) }) { n += 1 }
            return true
        }
        return n
    }

    private static func asciiLower(_ b: UInt8) -> UInt8 { b >= 65 && b <= 90 ? b | 0x20 : b }

    /// The first field with this name (case-insensitive).
    public func first(_ name: String) -> String? {
        let lower = name.lowercased()
        return fields.first { $0.name.lowercased() == lower }?.value
    }

    public func all(_ name: String) -> [String] {
        let lower = name.lowercased()
        return fields.filter { $0.name.lowercased() == lower }.map(\.value)
    }
}

extension String {
    func trimmingWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}

/// Extracts the `msg-id` of a Message-ID field value (`<left@right>`).
public func messageID(fromFieldValue value: String) -> String? {
    guard let open = value.firstIndex(of: "<"), let close = value[open...].firstIndex(of: ">") else {
        let trimmed = value.trimmingWhitespace()
        return trimmed.isEmpty ? nil : trimmed
    }
    return String(value[value.index(after: open)..<close])
}

/// Builds the `Received:` field Tern prepends (RFC 5321 §4.4, RFC 5322 §3.6.7).
public struct ReceivedHeader: Sendable {
    public var helo: String
    public var clientAddress: String
    public var byHost: String
    public var protocolName: String
    public var queueID: String
    /// Named only when there is exactly one recipient (privacy of Bcc).
    public var forRecipient: String?
    public var date: Int64 // Unix ms
    /// The TLS protocol the message came over, as a comment.
    public var tls: String? = nil

    public init(helo: String, clientAddress: String, byHost: String, protocolName: String,
                queueID: String, forRecipient: String?, date: Int64) {
        self.helo = helo
        self.clientAddress = clientAddress
        self.byHost = byHost
        self.protocolName = protocolName
        self.queueID = queueID
        self.forRecipient = forRecipient
        self.date = date
    }

    /// The folded field including its final CRLF.
    public var field: String {
        let literal = clientAddress.contains(":") ? "[IPv6:\(clientAddress)]" : "[\(clientAddress)]"
        var s = "Received: from \(sanitize(helo)) (\(literal))\r\n"
        s += "\tby \(byHost) (Tern) with \(protocolName) id \(queueID)"
        if let t = tls { s += "\r\n\t(using \(sanitize(t)))" }
        if let r = forRecipient { s += "\r\n\tfor <\(sanitize(r))>" }
        s += "; \(RFC5322Date.format(millis: date))\r\n"
        return s
    }

    private func sanitize(_ s: String) -> String {
        // Usually nothing to replace (bytes of non-ASCII scalars are ≥ 0x80 and stay).
        if s.utf8.allSatisfy({ $0 >= 32 && $0 != 127 && $0 != UInt8(ascii: "(") && $0 != UInt8(ascii: ")") }) { return s }
        return String(s.unicodeScalars.map { $0.value < 32 || $0.value == 127 || $0 == "(" || $0 == ")" ? "?" : Character($0) })
    }
}

/// RFC 5322 §3.3 date-time in UTC: `Sun, 29 Nov 2026 09:07:44 +0000`.
public enum RFC5322Date {
    static let days = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"] // 1970-01-01 was a Thursday
    static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    public static func format(millis: Int64) -> String {
        let t = split(millis)
        let weekday = days[Int(((t.dayNumber % 7) + 7) % 7)]
        return "\(weekday), \(t.day) \(months[Int(t.month) - 1]) \(t.year) \(t.clock) +0000"
    }

    /// `YYYY-MM-DD HH:MM:SS` in UTC, for tables people read.
    public static func timestamp(millis: Int64) -> String {
        let t = split(millis)
        return "\(t.year)-\(two(t.month))-\(two(t.day)) \(t.clock)"
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339 in UTC, milliseconds), for machines.
    public static func iso8601(millis: Int64) -> String {
        let t = split(millis)
        let ms = (millis % 1000 + 1000) % 1000
        return "\(t.year)-\(two(t.month))-\(two(t.day))T\(t.clock).\(ms < 10 ? "00" : ms < 100 ? "0" : "")\(ms)Z"
    }

    static func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }

    /// Unix milliseconds as a civil UTC date, its day number and `HH:MM:SS`.
    static func split(_ millis: Int64) -> (year: Int64, month: Int64, day: Int64, dayNumber: Int64, clock: String) {
        let secs = millis >= 0 ? millis / 1000 : (millis - 999) / 1000
        let dayNumber = secs >= 0 ? secs / 86400 : (secs - 86399) / 86400
        let sod = secs - dayNumber * 86400
        let (y, m, d) = civil(fromDays: dayNumber)
        return (y, m, d, dayNumber, "\(two(sod / 3600)):\(two(sod / 60 % 60)):\(two(sod % 60))")
    }

    /// Howard Hinnant's days-from-civil inverse.
    static func civil(fromDays z0: Int64) -> (Int64, Int64, Int64) {
        let z = z0 + 719468
        let era = (z >= 0 ? z : z - 146096) / 146097
        let doe = z - era * 146097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
        let y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        return (m <= 2 ? y + 1 : y, m, d)
    }
}
