// IPv4/IPv6 address and CIDR network values, parsed without the C library so
// that the session machine stays pure. Used for address literals
// (RFC 5321 §4.1.3) and for the trusted-network relay rule.

/// An IP address as 4 or 16 bytes.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    public var isIPv4: Bool { bytes.count == 4 }

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (with `::` and an
    /// embedded IPv4 tail). A zone suffix (`%eth0`) is ignored.
    public init?(_ text: some StringProtocol) {
        var s = Substring(text)
        if let pct = s.firstIndex(of: "%") { s = s[..<pct] }
        if let v4 = IPAddress.parseIPv4(s) {
            bytes = v4
        } else if let v6 = IPAddress.parseIPv6(s) {
            bytes = v6
        } else {
            return nil
        }
    }

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 4 || bytes.count == 16)
        self.bytes = bytes
    }

    /// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as its IPv4 address.
    public var unmapped: IPAddress {
        if bytes.count == 16, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff {
            return IPAddress(bytes: Array(bytes[12..<16]))
        }
        return self
    }

    /// The network of `prefix` bits this address is in (the address with
    /// the host bits cleared); IPv4-mapped addresses count as IPv4.
    public func masked(ipv4Prefix: Int, ipv6Prefix: Int) -> IPNetwork {
        let a = unmapped
        let prefix = max(0, min(a.isIPv4 ? ipv4Prefix : ipv6Prefix, a.bytes.count * 8))
        var bytes = a.bytes
        for i in 0..<bytes.count {
            let keep = max(0, min(8, prefix - i * 8))
            bytes[i] &= keep == 8 ? 0xFF : UInt8(truncatingIfNeeded: 0xFF << (8 - keep))
        }
        return IPNetwork(address: IPAddress(bytes: bytes), prefixLength: prefix)
    }

    /// 0.0.0.0 or :: (a listener on every address).
    public var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }

    /// 127.0.0.0/8 or ::1.
    public var isLoopback: Bool {
        let a = unmapped
        return a.isIPv4 ? a.bytes[0] == 127 : a.bytes == [UInt8](repeating: 0, count: 15) + [1]
    }

    public var description: String {
        if isIPv4 { return bytes.map(String.init).joined(separator: ".") }
        var groups: [UInt16] = []
        for i in stride(from: 0, to: 16, by: 2) { groups.append(UInt16(bytes[i]) << 8 | UInt16(bytes[i + 1])) }
        // RFC 5952: compress the longest run (≥2) of zero groups.
        var bestStart = -1, bestLen = 0, i = 0
        while i < 8 {
            if groups[i] == 0 {
                var j = i
                while j < 8 && groups[j] == 0 { j += 1 }
                if j - i > bestLen && j - i >= 2 { bestStart = i; bestLen = j - i }
                i = j
            } else { i += 1 }
        }
        func hex(_ g: ArraySlice<UInt16>) -> String { g.map { String($0, radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(groups[...]) }
        return hex(groups[0..<bestStart]) + "::" + hex(groups[(bestStart + bestLen)...])
    }

    static func parseIPv4(_ s: Substring) -> [UInt8]? {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var out: [UInt8] = []
        for p in parts {
            guard !p.isEmpty, p.count <= 3, p.allSatisfy({ $0.isASCII && $0.isNumber }),
                  let v = Int(p), v <= 255 else { return nil }
            if p.count > 1 && p.first == "0" { return nil } // no octal-looking forms
            out.append(UInt8(v))
        }
        return out
    }

    static func parseIPv6(_ s: Substring) -> [UInt8]? {
        guard s.contains(":") else { return nil }
        var head: [UInt16] = [], tail: [UInt16] = []
        var sawDouble = false
        var text = s
        var v4Tail: [UInt8]? = nil
        // An embedded IPv4 address may end the text.
        if let lastColon = text.lastIndex(of: ":"), text[text.index(after: lastColon)...].contains(".") {
            guard let v4 = parseIPv4(text[text.index(after: lastColon)...]) else { return nil }
            v4Tail = v4
            text = text[...lastColon]
            if text.hasSuffix("::") { /* keep "::" */ } else { text = text.dropLast() }
        }
        if let dbl = text.indices.first(where: { text[$0] == ":" && text.index(after: $0) < text.endIndex && text[text.index(after: $0)] == ":" }) {
            sawDouble = true
            let before = text[..<dbl], after = text[text.index(dbl, offsetBy: 2)...]
            if after.contains("::") { return nil }
            guard let h = groupsOf(before), let t = groupsOf(after) else { return nil }
            head = h; tail = t
        } else {
            guard let h = groupsOf(text) else { return nil }
            head = h
        }
        let v4Groups = v4Tail == nil ? 0 : 2
        let total = head.count + tail.count + v4Groups
        if sawDouble { guard total < 8 else { return nil } } else { guard total == 8 else { return nil } }
        var groups = head + Array(repeating: 0, count: 8 - total) + tail
        if !sawDouble { groups = head }
        var out: [UInt8] = []
        for g in groups { out.append(UInt8(g >> 8)); out.append(UInt8(g & 0xff)) }
        if let v4 = v4Tail { out += v4 }
        return out.count == 16 ? out : nil
    }

    private static func groupsOf(_ s: Substring) -> [UInt16]? {
        if s.isEmpty { return [] }
        var out: [UInt16] = []
        for p in s.split(separator: ":", omittingEmptySubsequences: false) {
            guard !p.isEmpty, p.count <= 4, let v = UInt16(p, radix: 16) else { return nil }
            out.append(v)
        }
        return out
    }
}

/// A CIDR network such as `127.0.0.0/8` or `::1/128`.
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    public let address: IPAddress
    public let prefixLength: Int

    /// Parses `ADDRESS/BITS` or a bare address (a host network).
    public init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 1 || parts.count == 2, let addr = IPAddress(parts[0]) else { return nil }
        let maxBits = addr.bytes.count * 8
        var bits = maxBits
        if parts.count == 2 {
            guard let b = Int(parts[1]), (0...maxBits).contains(b) else { return nil }
            bits = b
        }
        self.address = addr
        self.prefixLength = bits
    }

    public init(address: IPAddress, prefixLength: Int) {
        self.address = address
        self.prefixLength = prefixLength
    }

    public func contains(_ candidate: IPAddress) -> Bool {
        let c = address.isIPv4 ? candidate.unmapped : candidate
        guard c.bytes.count == address.bytes.count else { return false }
        var remaining = prefixLength
        for i in 0..<c.bytes.count where remaining > 0 {
            let take = min(8, remaining)
            let mask: UInt8 = take == 8 ? 0xff : ~(0xff >> UInt8(take))
            if c.bytes[i] & mask != address.bytes[i] & mask { return false }
            remaining -= take
        }
        return true
    }

    public var description: String { "\(address)/\(prefixLength)" }

    /// The default trusted networks: loopback only.
    public static let loopback: [IPNetwork] = [IPNetwork("127.0.0.0/8")!, IPNetwork("::1/128")!]
}
