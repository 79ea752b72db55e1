// DNS as email authentication needs it (SPF, DKIM, DMARC): TXT, A, AAAA,
// MX and PTR look-ups by type, with the TTL of each answer, so that one
// cache in front of the resolver keeps every answer for as long as its
// owner allows. The same c-ares resolver (and --resolver) serves delivery
// and authentication.

import Foundation
import Synchronization
import TernProtocol

public enum DNSRecordType: UInt16, Sendable, CustomStringConvertible {
    case a = 1, ptr = 12, mx = 15, txt = 16, aaaa = 28

    public var description: String {
        switch self {
        case .a: "A"
        case .ptr: "PTR"
        case .mx: "MX"
        case .txt: "TXT"
        case .aaaa: "AAAA"
        }
    }
}

/// One record's data, as the authentication checks read it.
public enum DNSRData: Sendable, Hashable {
    case address(IPAddress)
    /// A TXT record: its strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2), as bytes: SPF and DKIM decide what is text.
    case text([UInt8])
    case mx(preference: Int, host: String)
    /// A PTR target.
    case name(String)
}

public struct DNSLookup: Sendable {
    public var answer: DNSAnswer<[DNSRData]>
    /// Seconds the answer may be kept: the smallest TTL of the records; for a negative answer, 0 when unknown.
    public var ttl: UInt32
    public init(_ answer: DNSAnswer<[DNSRData]>, ttl: UInt32 = 0) {
        self.answer = answer
        self.ttl = ttl
    }
}

/// Look-ups by record type. CAresResolver answers them from the network;
/// tests may answer from tables.
public protocol AuthDNS: Sendable {
    func lookup(_ name: String, _ type: DNSRecordType) async -> DNSLookup
}

/// An answer's records mapped to the values `f` takes from them; none left is no records.
func mapped<T: Sendable>(_ answer: DNSAnswer<[DNSRData]>, _ f: (DNSRData) -> T?) -> DNSAnswer<[T]> {
    switch answer {
    case .records(let r):
        let values = r.compactMap(f)
        return values.isEmpty ? .noRecords : .records(values)
    case .nxdomain: return .nxdomain
    case .noRecords: return .noRecords
    case .temporaryFailure(let why): return .temporaryFailure(why)
    }
}

extension AuthDNS {
    func mapped<T: Sendable>(_ name: String, _ type: DNSRecordType, _ f: (DNSRData) -> T?) async -> DNSAnswer<[T]> {
        TernRouting.mapped(await lookup(name, type).answer, f)
    }

    /// TXT records as text (invalid UTF-8 replaced: callers that must refuse non-ASCII use `txtBytes`).
    public func txt(_ name: String) async -> DNSAnswer<[String]> {
        await mapped(name, .txt) { if case .text(let b) = $0 { String(decoding: b, as: UTF8.self) } else { nil } }
    }

    public func txtBytes(_ name: String) async -> DNSAnswer<[[UInt8]]> {
        await mapped(name, .txt) { if case .text(let b) = $0 { b } else { nil } }
    }

    public func ipv4(_ name: String) async -> DNSAnswer<[IPAddress]> {
        await mapped(name, .a) { if case .address(let a) = $0, a.isIPv4 { a } else { nil } }
    }

    public func ipv6(_ name: String) async -> DNSAnswer<[IPAddress]> {
        await mapped(name, .aaaa) { if case .address(let a) = $0, !a.isIPv4 { a } else { nil } }
    }

    public func mxHosts(_ name: String) async -> DNSAnswer<[MXRecord]> {
        await mapped(name, .mx) { if case .mx(let p, let h) = $0 { MXRecord(preference: p, host: h) } else { nil } }
    }

    public func ptr(_ name: String) async -> DNSAnswer<[String]> {
        await mapped(name, .ptr) { if case .name(let n) = $0 { n } else { nil } }
    }
}

/// The reverse-lookup name of an address (RFC 1035 §3.5, RFC 3596 §2.5).
public func reverseName(_ ip: IPAddress) -> String {
    if ip.isIPv4 { return ip.bytes.reversed().map(String.init).joined(separator: ".") + ".in-addr.arpa" }
    let hex = Array("0123456789abcdef")
    var nibbles: [String] = []
    for b in ip.bytes.reversed() {
        nibbles.append(String(hex[Int(b & 0xf)]))
        nibbles.append(String(hex[Int(b >> 4)]))
    }
    return nibbles.joined(separator: ".") + ".ip6.arpa"
}

/// Answers kept for their TTL (between `minimumSeconds` and `maximumSeconds`),
/// negative ones for `negativeSeconds`, temporary failures never; at most
/// `capacity` entries (the oldest half dropped when full).
public final class CachingAuthDNS: AuthDNS, Sendable {
    struct Entry {
        let lookup: DNSLookup
        let until: Int64
        let stored: Int64
    }

    struct Key: Hashable {
        let name: String
        let type: UInt16
    }

    public let base: any AuthDNS
    let clock: @Sendable () -> Int64
    let entries = Mutex<[Key: Entry]>([:])
    let capacity: Int
    let minimumSeconds: Int64
    let maximumSeconds: Int64
    let negativeSeconds: Int64
    let counters = Mutex<(hits: Int, misses: Int)>((0, 0))

    /// - Parameter clock: milliseconds.
    public init(base: any AuthDNS, clock: @escaping @Sendable () -> Int64, capacity: Int = 50_000,
                minimumSeconds: Int64 = 30, maximumSeconds: Int64 = 86_400, negativeSeconds: Int64 = 300) {
        self.base = base
        self.clock = clock
        self.capacity = capacity
        self.minimumSeconds = minimumSeconds
        self.maximumSeconds = maximumSeconds
        self.negativeSeconds = negativeSeconds
    }

    public var hitsAndMisses: (hits: Int, misses: Int) { counters.withLock { $0 } }

    public func lookup(_ name: String, _ type: DNSRecordType) async -> DNSLookup {
        let key = Key(name: name.lowercased(), type: type.rawValue)
        let now = clock()
        if let hit = entries.withLock({ $0[key] }), hit.until > now {
            counters.withLock { $0.hits += 1 }
            var l = hit.lookup
            l.ttl = UInt32(max(0, (hit.until - now) / 1000))
            return l
        }
        counters.withLock { $0.misses += 1 }
        let fresh = await base.lookup(name, type)
        let seconds: Int64
        switch fresh.answer {
        case .records: seconds = min(max(Int64(fresh.ttl), minimumSeconds), maximumSeconds)
        case .nxdomain, .noRecords: seconds = fresh.ttl > 0 ? min(Int64(fresh.ttl), negativeSeconds) : negativeSeconds
        case .temporaryFailure: return fresh
        }
        let stored = clock()
        entries.withLock { e in
            if e.count >= capacity {
                let oldest = e.sorted { $0.value.stored < $1.value.stored }.prefix(max(1, capacity / 2)).map(\.key)
                for k in oldest { e[k] = nil }
            }
            e[key] = Entry(lookup: fresh, until: stored + seconds * 1000, stored: stored)
        }
        return fresh
    }
}

extension DNSMessage {
    /// The answer section's records of `type` and their smallest TTL; nil when the message cannot be read.
    public static func records(_ m: [UInt8], type: DNSRecordType) -> (records: [DNSRData], ttl: UInt32)? {
        guard m.count >= 12 else { return nil }
        func u16(_ i: Int) -> Int? { i + 2 <= m.count ? Int(m[i]) << 8 | Int(m[i + 1]) : nil }
        guard let qd = u16(4), let an = u16(6) else { return nil }
        var i = 12
        for _ in 0..<qd {
            guard let (_, end) = name(m, at: i) else { return nil }
            i = end + 4
        }
        var out: [DNSRData] = []
        var ttl: UInt32? = nil
        for _ in 0..<an {
            guard let (_, end) = name(m, at: i), let t = u16(end), end + 10 <= m.count, let rdlen = u16(end + 8) else { return nil }
            let rr = UInt32(m[end + 4]) << 24 | UInt32(m[end + 5]) << 16 | UInt32(m[end + 6]) << 8 | UInt32(m[end + 7])
            let start = end + 10
            guard start + rdlen <= m.count else { return nil }
            if t == Int(type.rawValue) {
                let rdata = m[start..<start + rdlen]
                switch type {
                case .a where rdlen == 4, .aaaa where rdlen == 16:
                    out.append(.address(IPAddress(bytes: Array(rdata))))
                case .txt:
                    var text: [UInt8] = []
                    var j = start
                    while j < start + rdlen {
                        let n = Int(m[j])
                        guard j + 1 + n <= start + rdlen else { return nil }
                        text += m[j + 1..<j + 1 + n]
                        j += 1 + n
                    }
                    out.append(.text(text))
                case .mx:
                    guard let pref = u16(start), let (host, _) = name(m, at: start + 2) else { return nil }
                    out.append(.mx(preference: pref, host: host))
                case .ptr:
                    guard let (target, _) = name(m, at: start) else { return nil }
                    out.append(.name(target))
                default:
                    return nil
                }
                ttl = min(ttl ?? rr, rr)
            }
            i = start + rdlen
        }
        return (out, ttl ?? 0)
    }

    /// A (possibly compressed) name at `start` and the offset after it; "" for the root.
    static func name(_ m: [UInt8], at start: Int) -> (String, Int)? {
        var labels: [String] = []
        var i = start
        var end: Int? = nil
        var jumps = 0
        while i < m.count {
            let len = Int(m[i])
            if len == 0 {
                return (labels.joined(separator: "."), end ?? i + 1)
            }
            if len & 0xC0 == 0xC0 {
                guard i + 1 < m.count, jumps < 64 else { return nil }
                if end == nil { end = i + 2 }
                i = (len & 0x3F) << 8 | Int(m[i + 1])
                jumps += 1
                continue
            }
            guard len & 0xC0 == 0, i + 1 + len <= m.count else { return nil }
            labels.append(String(decoding: m[i + 1..<i + 1 + len], as: UTF8.self))
            i += 1 + len
        }
        return nil
    }
}
