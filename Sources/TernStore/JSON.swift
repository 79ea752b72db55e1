// A minimal JSON writer for event details and CLI output (RFC 8259 string
// escaping), so that no hot path goes through Foundation's encoders.

public indirect enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case int64(Int64)
    /// Finite numbers only; NaN and infinities are written as null.
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool { a.text == b.text }

    public var text: String {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        write(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends the UTF-8 of this value: bytes, not String appends, so that a
    /// detail written per message costs one buffer and one String.
    public func write(to out: inout [UInt8]) {
        switch self {
        case .null: JSON.append("null", to: &out)
        case .bool(let b): JSON.append(b ? "true" : "false", to: &out)
        case .int(let i): JSON.append(i, to: &out)
        case .int64(let i): JSON.append(Int(i), to: &out)
        case .double(let d): out.append(contentsOf: (d.isFinite ? String(d) : "null").utf8)
        case .string(let s): JSON.quote(s, into: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                item.write(to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let pairs):
            out.append(UInt8(ascii: "{"))
            for (i, (k, v)) in pairs.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                JSON.quote(k, into: &out)
                out.append(UInt8(ascii: ":"))
                v.write(to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func append(_ literal: StaticString, to out: inout [UInt8]) {
        literal.withUTF8Buffer { out.append(contentsOf: $0) }
    }

    static func append(_ i: Int, to out: inout [UInt8]) {
        out.append(contentsOf: String(i).utf8) // a small string: no allocation
    }

    /// RFC 8259 §7: quotation mark, reverse solidus and control characters
    /// escaped; everything else, non-ASCII included, as it is.
    static func quote(_ s: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { bytes in
            // Runs that need no escape are appended whole; most strings
            // (addresses, host names, replies) are one such run.
            var start = 0
            for (i, b) in bytes.enumerated() where b < 0x20 || b == 0x22 || b == 0x5C {
                if start < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start..<i])) }
                switch b {
                case 0x22: append("\\\"", to: &out)
                case 0x5C: append("\\\\", to: &out)
                case 0x0A: append("\\n", to: &out)
                case 0x0D: append("\\r", to: &out)
                case 0x09: append("\\t", to: &out)
                default: // \u00XX, lower-case hex
                    append("\\u00", to: &out)
                    ("0123456789abcdef" as StaticString).withUTF8Buffer { hex in
                        out.append(hex[Int(b >> 4)])
                        out.append(hex[Int(b & 0xF)])
                    }
                }
                start = i + 1
            }
            if start < bytes.count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[start...])) }
        }
        out.append(UInt8(ascii: "\""))
    }
}

/// One flat JSON object written field by field into one buffer: the event
/// details written for every message, without building `JSON` values first.
/// Keys are ASCII names spelled in the code, written as they are.
public struct JSONObjectWriter {
    private var out: [UInt8] = []

    public init(capacity: Int = 192) {
        out.reserveCapacity(capacity)
        out.append(UInt8(ascii: "{"))
    }

    private mutating func key(_ k: StaticString) {
        if out.count > 1 { out.append(UInt8(ascii: ",")) }
        out.append(UInt8(ascii: "\""))
        JSON.append(k, to: &out)
        out.append(UInt8(ascii: "\""))
        out.append(UInt8(ascii: ":"))
    }

    /// A string, or null.
    public mutating func add(_ k: StaticString, _ value: String?) {
        key(k)
        if let value { JSON.quote(value, into: &out) } else { JSON.append("null", to: &out) }
    }

    public mutating func add(_ k: StaticString, _ value: Int) {
        key(k)
        JSON.append(value, to: &out)
    }

    /// A number of milliseconds (or any whole number), or null.
    public mutating func add(_ k: StaticString, _ value: Int64?) {
        key(k)
        if let value { out += Array(String(value).utf8) } else { JSON.append("null", to: &out) }
    }

    /// A finite number (others are written as null).
    public mutating func add(_ k: StaticString, _ value: Double) {
        key(k)
        if value.isFinite { out += Array(String(value).utf8) } else { JSON.append("null", to: &out) }
    }

    public mutating func finish() -> String {
        out.append(UInt8(ascii: "}"))
        return String(decoding: out, as: UTF8.self)
    }
}
