// DKIM's canonicalisation and signature field (RFC 6376 §3.4, §3.5, §5.4),
// as pure code over the message bytes: splitting the header fields (folded
// lines kept whole, raw 8-bit bytes kept as they are), the simple and
// relaxed forms of a header field and of the body, choosing the fields an
// `h=` list signs (bottom-up for repeated names, §5.4.2), and the
// DKIM-Signature field's text. The cryptography is TernDKIM's.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public enum DKIMCanonicalization: String, Sendable, CaseIterable {
    case simple, relaxed
}

/// One header field as it appears in the message: the whole field,
/// continuation lines and the final CRLF included.
public struct RawHeaderField: Sendable, Equatable {
    public var raw: [UInt8]
    /// The field name as written (before the colon, without trailing WSP).
    public var name: String
    public var lowercasedName: String

    public init(raw: [UInt8], name: String) {
        self.raw = raw
        self.name = name
        self.lowercasedName = name.lowercased()
    }
}

public enum DKIMCanonical {
    /// The header fields of `message` in order, and where the body starts
    /// (after the empty line; the message's end when there is none). A
    /// line ending in a bare LF is taken as a line (as the body canon does).
    public static func split(_ message: [UInt8]) -> (fields: [RawHeaderField], bodyStart: Int) {
        var fields: [RawHeaderField] = []
        var i = 0
        let n = message.count
        func lineEnd(_ from: Int) -> Int {
            var j = from
            while j < n && message[j] != 10 { j += 1 }
            return j < n ? j + 1 : n
        }
        while i < n {
            // The empty line ends the header.
            if message[i] == 10 { return (fields, i + 1) }
            if message[i] == 13 && i + 1 < n && message[i + 1] == 10 { return (fields, i + 2) }
            var end = lineEnd(i)
            // Continuation lines start with WSP.
            while end < n && (message[end] == 32 || message[end] == 9) { end = lineEnd(end) }
            let raw = Array(message[i..<end])
            // A line without a colon is no field; its "name" is the line
            // itself (without the line break), which no h= list names.
            let colon = raw.firstIndex(of: UInt8(ascii: ":")) ?? (raw.firstIndex { $0 == 13 || $0 == 10 } ?? raw.count)
            var nameEnd = colon
            while nameEnd > 0 && (raw[nameEnd - 1] == 32 || raw[nameEnd - 1] == 9) { nameEnd -= 1 }
            fields.append(RawHeaderField(raw: raw, name: String(decoding: raw[..<nameEnd], as: UTF8.self)))
            i = end
        }
        return (fields, n)
    }

    /// A header field in canonical form, CRLF-terminated.
    public static func header(_ field: RawHeaderField, _ c: DKIMCanonicalization) -> [UInt8] {
        switch c {
        case .simple:
            var out = field.raw
            // A field whose last line ended in a bare LF (or nothing) is hashed with CRLF, as sent.
            if out.last == 10 && (out.count < 2 || out[out.count - 2] != 13) { out.insert(13, at: out.count - 1) }
            if out.last != 10 { out += [13, 10] }
            return out
        case .relaxed:
            return relaxedHeader(name: field.name, value: value(of: field))
        }
    }

    /// The bytes after the colon, line breaks included.
    public static func value(of field: RawHeaderField) -> ArraySlice<UInt8> {
        guard let colon = field.raw.firstIndex(of: UInt8(ascii: ":")) else { return [] }
        return field.raw[(colon + 1)...]
    }

    /// §3.4.2: name lower-cased; the value unfolded, WSP runs made one SP,
    /// WSP at its start and end removed.
    static func relaxedHeader(name: String, value: ArraySlice<UInt8>) -> [UInt8] {
        // Line breaks are removed everywhere (unfolding); a bare CR cannot
        // reach here from SMTP (intake refuses it), but the bytes decide.
        var out = Array(name.lowercased().utf8).filter { $0 != 13 && $0 != 10 }
        out.append(UInt8(ascii: ":"))
        var pendingSpace = false
        var started = false
        for b in value {
            switch b {
            case 13, 10:
                continue // unfolding: the WSP after a line break stays and collapses below
            case 32, 9:
                if started { pendingSpace = true }
            default:
                if pendingSpace { out.append(32); pendingSpace = false }
                out.append(b)
                started = true
            }
        }
        out += [13, 10]
        return out
    }

    /// The body in canonical form (§3.4.3, §3.4.4), in one pass and one
    /// allocation: empty lines are counted and written only when a line
    /// with content follows (empty lines at the end are ignored).
    public static func body(_ body: ArraySlice<UInt8>, _ c: DKIMCanonicalization) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(body.count + 2)
        body.withUnsafeBufferPointer { p in
            var pendingEmpty = 0
            func line(_ from: Int, _ to: Int) {
                var end = to
                if end > from && p[end - 1] == 13 { end -= 1 }
                var first = from, last = end
                if c == .relaxed {
                    while first < end && (p[first] == 32 || p[first] == 9) { first += 1 }
                    while last > first && (p[last - 1] == 32 || p[last - 1] == 9) { last -= 1 }
                }
                if first == last { pendingEmpty += 1; return }
                for _ in 0..<pendingEmpty { out.append(13); out.append(10) }
                pendingEmpty = 0
                if c == .simple {
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: p[from..<end]))
                } else {
                    // Leading WSP becomes one SP; runs inside become one SP; trailing WSP goes.
                    if first > from { out.append(32) }
                    var i = first
                    while i < last {
                        // Copy up to the next WSP in one go.
                        var j = i
                        while j < last && p[j] != 32 && p[j] != 9 { j += 1 }
                        out.append(contentsOf: UnsafeBufferPointer(rebasing: p[i..<j]))
                        if j < last {
                            out.append(32)
                            while j < last && (p[j] == 32 || p[j] == 9) { j += 1 }
                        }
                        i = j
                    }
                }
                out.append(13)
                out.append(10)
            }
            var start = 0
            while start < p.count {
                guard let base = p.baseAddress, let lf = memchr(base + start, 10, p.count - start) else {
                    // A last line without a line break is a line all the same (sent with CRLF).
                    line(start, p.count)
                    break
                }
                let i = base.distance(to: lf.assumingMemoryBound(to: UInt8.self))
                line(start, i)
                start = i + 1
            }
        }
        if out.isEmpty && c == .simple { return [13, 10] }
        return out
    }

    /// The fields that `names` (an `h=` list, repeats allowed) sign, in
    /// order: for each name the last instance not yet used, bottom-up; a name
    /// with no instance left signs nothing (over-signing, §5.4.2, §8.15).
    public static func select(_ names: [String], from fields: [RawHeaderField]) -> [RawHeaderField] {
        var used = Set<Int>()
        var out: [RawHeaderField] = []
        for name in names {
            let lower = name.utf8.contains { $0 >= 65 && $0 <= 90 } ? name.lowercased() : name
            guard let i = fields.indices.reversed().first(where: { !used.contains($0) && fields[$0].lowercasedName == lower }) else { continue }
            used.insert(i)
            out.append(fields[i])
        }
        return out
    }
}

/// The DKIM-Signature field being built (RFC 6376 §3.5).
public struct DKIMSignatureField: Sendable {
    public var algorithm: String          // rsa-sha256 | ed25519-sha256
    public var headerCanon: DKIMCanonicalization
    public var bodyCanon: DKIMCanonicalization
    public var domain: String
    public var selector: String
    public var headers: [String]
    public var bodyHash: String           // base64
    public var timestamp: Int64?
    public var expiration: Int64?

    public init(algorithm: String, headerCanon: DKIMCanonicalization, bodyCanon: DKIMCanonicalization, domain: String,
                selector: String, headers: [String], bodyHash: String, timestamp: Int64?, expiration: Int64?) {
        self.algorithm = algorithm
        self.headerCanon = headerCanon
        self.bodyCanon = bodyCanon
        self.domain = domain
        self.selector = selector
        self.headers = headers
        self.bodyHash = bodyHash
        self.timestamp = timestamp
        self.expiration = expiration
    }

    /// The field up to and including `b=`, folded at tag boundaries; the
    /// signature is computed over this (canonicalised, without a final CRLF)
    /// and then appended.
    public var unsigned: String {
        var tags = ["v=1", "a=\(algorithm)", "c=\(headerCanon.rawValue)/\(bodyCanon.rawValue)", "d=\(domain)", "s=\(selector)"]
        if let t = timestamp { tags.append("t=\(t)") }
        if let x = expiration { tags.append("x=\(x)") }
        tags.append("h=" + headers.map { $0.lowercased() }.joined(separator: ":"))
        tags.append("bh=\(bodyHash)")
        var out = "DKIM-Signature: "
        var lineLength = out.count
        for tag in tags {
            let piece = tag + "; "
            if lineLength + piece.count > 78 && lineLength > 1 {
                out += "\r\n\t"
                lineLength = 1
            }
            out += piece
            lineLength += piece.count
        }
        return out + "b="
    }

    /// The whole field, CRLF-terminated, with `signature` (base64) folded in lines of 72.
    public func signed(_ signature: String) -> String {
        var out = unsigned
        var rest = Substring(signature)
        while !rest.isEmpty {
            out += "\r\n\t" + rest.prefix(72)
            rest = rest.dropFirst(72)
        }
        return out + "\r\n"
    }
}
