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
    public init(_ bytes: some Collection<UInt8>) { self.init(parsing: bytes) }

    /// The same for raw bytes (intake's path). A generic initialiser called
    /// from another module runs unspecialised, through witness tables for
    /// every byte (2.8 % of the server's CPU at 20 sessions); this overload
    /// is specialised here.
    public init(_ bytes: UnsafeRawBufferPointer) { self.init(parsing: bytes) }

    private init(parsing bytes: some Collection<UInt8>) {
        var fields: [(String, String)] = []
        var current: (name: String, value: [UInt8])? = nil
        var consumed = 0
        var lineStart = bytes.startIndex
        var i = bytes.startIndex
        func flush() {
            if let c = current {
                let value = String(decoding: c.value, as: UTF8.self)
                fields.append((c.name, value.trimmingWhitespace()))
            }
            current = nil
        }
        while i != bytes.endIndex {
            if bytes[i] == 10 {
                var line = Array(bytes[lineStart..<i])
                if line.last == 13 { line.removeLast() }
                let lineLength = bytes.distance(from: lineStart, to: i) + 1
                if line.isEmpty {
                    consumed += lineLength
                    flush()
                    self.fields = fields
                    self.length = consumed
                    return
                }
                if line.first == 32 || line.first == 9 {
                    guard current != nil else { break }
                    current!.value += line   // RFC 5322 §2.2.3 unfolding: drop the CRLF only
                } else if let colon = line.firstIndex(of: 58), colon > 0,
                          line[..<colon].allSatisfy({ $0 >= 33 && $0 <= 126 }) {
                    flush()
                    current = (String(decoding: line[..<colon], as: UTF8.self), Array(line[(colon + 1)...]))
                } else {
                    break
                }
                consumed += lineLength
                lineStart = bytes.index(after: i)
            }
            i = bytes.index(after: i)
        }
        flush()
        self.fields = fields
        self.length = consumed
    }

    /// `HeaderBlock(bytes).first(name)` without parsing every field: intake
    /// wants the Message-ID of every message, and building all fields as
    /// strings cost more than the rest of its header work. Same grammar:
    /// lines end in CRLF or LF, a blank line or a line that is neither a
    /// field nor a continuation ends the section.
    public static func firstValue(_ name: String, in bytes: UnsafeRawBufferPointer) -> String? {
        let wanted = Array(name.utf8)
        var value: [UInt8]? = nil   // the wanted field's value, while it is the current field
        var haveCurrent = false
        var lineStart = 0
        guard let base = bytes.baseAddress else { return nil }
        while lineStart < bytes.count, let p = memchr(base + lineStart, 10, bytes.count - lineStart) {
            let lf = base.distance(to: UnsafeRawPointer(p))
            var end = lf
            if end > lineStart && bytes[end - 1] == 13 { end -= 1 }
            if end == lineStart { break } // the blank line
            let first = bytes[lineStart]
            if first == 32 || first == 9 {
                guard haveCurrent else { break }
                value?.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[lineStart..<end]))
            } else if let colon = (lineStart..<end).first(where: { bytes[$0] == 58 }), colon > lineStart,
                      (lineStart..<colon).allSatisfy({ bytes[$0] >= 33 && bytes[$0] <= 126 }) {
                if value != nil { break } // the wanted field is complete
                haveCurrent = true
                if colon - lineStart == wanted.count,
                   zip(wanted, UnsafeRawBufferPointer(rebasing: bytes[lineStart..<colon])).allSatisfy({ asciiLower($0) == asciiLower($1) }) {
                    value = Array(UnsafeRawBufferPointer(rebasing: bytes[(colon + 1)..<end]))
                }
            } else {
                break
            }
            lineStart = lf + 1
        }
        return value.map { String(decoding: $0, as: UTF8.self).trimmingWhitespace() }
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
