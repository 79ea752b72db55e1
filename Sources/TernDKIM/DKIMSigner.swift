// DKIM signing (RFC 6376, RFC 8301: rsa-sha256 with keys of 2048 bits and
// more; RFC 8463: ed25519-sha256). Keys are parsed once, at start-up, from
// PEM files (PKCS#8, or PKCS#1 for RSA); signatures are made with
// swift-crypto (CryptoExtras for RSA) over the canonical forms TernMessage
// builds. Which domain signs: the From: header's domain, or its nearest
// parent with a key, or the configured `sign_as` fallback; a domain with two
// keys signs twice, Ed25519 first.

import Crypto
import CryptoExtras
import Foundation
import TernMessage

public struct DKIMError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// A private key and what DNS must publish for it.
public enum DKIMPrivateKey: Sendable {
    case rsa(_RSA.Signing.PrivateKey)
    case ed25519(Curve25519.Signing.PrivateKey)

    public enum Algorithm: String, Sendable, CaseIterable {
        case rsa, ed25519
        /// The `a=` value.
        public var signatureAlgorithm: String { self == .rsa ? "rsa-sha256" : "ed25519-sha256" }
    }

    public var algorithm: Algorithm {
        switch self {
        case .rsa: return .rsa
        case .ed25519: return .ed25519
        }
    }

    /// The DER of a PKCS#8 Ed25519 key is this prefix and the 32-byte seed (RFC 8410).
    static let ed25519PKCS8Prefix: [UInt8] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]

    /// Reads a PEM key: Ed25519 in PKCS#8, RSA in PKCS#8 or PKCS#1 (≥ 2048 bits).
    public init(pem: String, expected: Algorithm? = nil, source: String = "key") throws {
        if let der = DKIMPrivateKey.der(pem, label: "PRIVATE KEY"), der.count == 48,
           Array(der.prefix(16)) == DKIMPrivateKey.ed25519PKCS8Prefix {
            self = .ed25519(try Curve25519.Signing.PrivateKey(rawRepresentation: der.suffix(32)))
        } else {
            let rsa: _RSA.Signing.PrivateKey
            do {
                // The "unsafe" reader takes keys under 2048 bits too, so that
                // the error can say what is wrong with them.
                rsa = try _RSA.Signing.PrivateKey(unsafePEMRepresentation: pem)
            } catch {
                throw DKIMError("\(source): not an Ed25519 (PKCS#8) or RSA (PKCS#8 or PKCS#1) private key in PEM")
            }
            guard rsa.keySizeInBits >= 2048 else {
                throw DKIMError("\(source): an RSA key of \(rsa.keySizeInBits) bits is too small for DKIM (at least 2048, RFC 8301)")
            }
            self = .rsa(rsa)
        }
        if let expected, expected != algorithm {
            throw DKIMError("\(source): the key is \(algorithm.rawValue), the configuration says \(expected.rawValue)")
        }
    }

    /// A new key.
    public static func generate(_ algorithm: Algorithm, bits: Int = 2048) throws -> DKIMPrivateKey {
        switch algorithm {
        case .ed25519:
            return .ed25519(Curve25519.Signing.PrivateKey())
        case .rsa:
            guard bits >= 2048 else { throw DKIMError("RSA keys for DKIM need at least 2048 bits (RFC 8301)") }
            return .rsa(try _RSA.Signing.PrivateKey(keySize: .init(bitCount: bits)))
        }
    }

    /// PEM, PKCS#8.
    public var pem: String {
        switch self {
        case .rsa(let k): return k.pemRepresentation
        case .ed25519(let k):
            let der = Data(DKIMPrivateKey.ed25519PKCS8Prefix) + k.rawRepresentation
            let lines = der.base64EncodedString().chunked(64)
            return "-----BEGIN PRIVATE KEY-----\n" + lines.joined(separator: "\n") + "\n-----END PRIVATE KEY-----\n"
        }
    }

    /// The `p=` value of the key record.
    public var publicKeyBase64: String {
        switch self {
        case .rsa(let k): return k.publicKey.derRepresentation.base64EncodedString()
        case .ed25519(let k): return k.publicKey.rawRepresentation.base64EncodedString()
        }
    }

    /// The TXT record to publish at SELECTOR._domainkey.DOMAIN.
    public var dnsRecord: String { "v=DKIM1; k=\(algorithm.rawValue); p=\(publicKeyBase64)" }

    func sign(_ data: [UInt8]) throws -> Data {
        switch self {
        case .rsa(let k):
            return try k.signature(for: data, padding: .insecurePKCS1v1_5).rawRepresentation
        case .ed25519(let k):
            // RFC 8463 §3: Ed25519 over the SHA-256 hash.
            return try k.signature(for: Data(SHA256.hash(data: data)))
        }
    }

    static func der(_ pem: String, label: String) -> Data? {
        guard let begin = pem.range(of: "-----BEGIN \(label)-----"), let end = pem.range(of: "-----END \(label)-----"),
              begin.upperBound <= end.lowerBound else { return nil }
        return Data(base64Encoded: pem[begin.upperBound..<end.lowerBound].filter { !$0.isWhitespace })
    }
}

extension String {
    /// Pieces of at most `n` characters (PEM lines, TXT strings).
    public func chunked(_ n: Int) -> [String] {
        var out: [String] = []
        var rest = Substring(self)
        while !rest.isEmpty {
            out.append(String(rest.prefix(n)))
            rest = rest.dropFirst(n)
        }
        return out
    }
}

/// A signing identity: domain, selector, key.
public struct DKIMKey: Sendable {
    public var domain: String
    public var selector: String
    public var key: DKIMPrivateKey

    public init(domain: String, selector: String, key: DKIMPrivateKey) {
        self.domain = domain.lowercased()
        self.selector = selector
        self.key = key
    }
}

public struct DKIMSigningPolicy: Sendable {
    /// Header fields signed when present.
    public var headers = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "In-Reply-To", "References",
                          "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe",
                          "List-Unsubscribe-Post", "Feedback-ID"]
    /// Signed once more than they occur, so that none can be added (RFC 6376 §8.15).
    public var overSigned = ["From", "Subject", "List-Unsubscribe"]
    public var headerCanon = DKIMCanonicalization.relaxed
    public var bodyCanon = DKIMCanonicalization.relaxed
    /// Seconds a signature is valid (`x=`); nil: no expiry.
    public var expirySeconds: Int64? = nil
    /// Signs mail whose From: domain has no key of its own.
    public var signAs: String? = nil

    public init() {}
}

public final class DKIMSigner: Sendable {
    public let keys: [DKIMKey]
    public let policy: DKIMSigningPolicy

    /// The policy's header names, lower-cased once, with whether each is over-signed.
    let signedNames: [(String, Bool)]

    public init(keys: [DKIMKey], policy: DKIMSigningPolicy = DKIMSigningPolicy()) throws {
        let over = Set(policy.overSigned.map { $0.lowercased() })
        var seen = Set<String>()
        signedNames = policy.headers.map { $0.lowercased() }.filter { seen.insert($0).inserted }.map { ($0, over.contains($0)) }
        if let s = policy.signAs, !keys.contains(where: { $0.domain == s.lowercased() }) {
            throw DKIMError("dkim sign_as \(s): no [[dkim]] key for that domain")
        }
        self.keys = keys
        self.policy = policy
    }

    /// The keys that sign mail from `domain`: its own, else its nearest
    /// parent's, else `sign_as`'s; Ed25519 first.
    public func keys(for domain: String) -> [DKIMKey] {
        var d = Substring(domain.lowercased())
        while true {
            let found = keys.filter { $0.domain == d }
            if !found.isEmpty { return found.sorted { $0.key.algorithm == .ed25519 && $1.key.algorithm != .ed25519 } }
            guard let dot = d.firstIndex(of: ".") else { break }
            d = d[d.index(after: dot)...]
            if !d.contains(".") { break } // never a bare TLD
        }
        guard let s = policy.signAs?.lowercased() else { return [] }
        return keys.filter { $0.domain == s }.sorted { $0.key.algorithm == .ed25519 && $1.key.algorithm != .ed25519 }
    }

    /// The DKIM-Signature fields to put on top of `message` (empty when no
    /// key applies or the message has no From:), at `now` (Unix seconds).
    public func sign(_ message: [UInt8], now: Int64) throws -> String {
        let (fields, bodyStart) = DKIMCanonical.split(message)
        guard let from = fields.last(where: { $0.lowercasedName == "from" }),
              let domain = DKIMSigner.fromDomain(from) else { return "" }
        let chosen = keys(for: domain)
        guard !chosen.isEmpty else { return "" }
        // h=: each listed field as often as it occurs, over-signed ones once more.
        var present: [String: Int] = [:]
        for f in fields { present[f.lowercasedName, default: 0] += 1 }
        var names: [String] = []
        for (h, over) in signedNames { names += Array(repeating: h, count: present[h, default: 0] + (over ? 1 : 0)) }
        let signed = DKIMCanonical.select(names, from: fields)
        var headerData: [UInt8] = []
        for f in signed { headerData += DKIMCanonical.header(f, policy.headerCanon) }
        let body = DKIMCanonical.body(message[bodyStart...], policy.bodyCanon)
        let bodyHash = Data(SHA256.hash(data: body)).base64EncodedString()
        var out = ""
        for k in chosen {
            let field = DKIMSignatureField(
                algorithm: k.key.algorithm.signatureAlgorithm, headerCanon: policy.headerCanon, bodyCanon: policy.bodyCanon,
                domain: k.domain, selector: k.selector, headers: names, bodyHash: bodyHash, timestamp: now,
                expiration: policy.expirySeconds.map { now + $0 })
            let unsigned = RawHeaderField(raw: Array(field.unsigned.utf8), name: "DKIM-Signature")
            var data = headerData
            var own = DKIMCanonical.header(unsigned, policy.headerCanon)
            own.removeLast(2) // without its CRLF (RFC 6376 §3.7)
            data += own
            out += field.signed(try k.key.sign(data).base64EncodedString())
        }
        return out
    }

    /// The domain of the (last) From: address: after the last `@` of the
    /// angle address, else of the value; lower-case.
    static func fromDomain(_ field: RawHeaderField) -> String? {
        let value = DKIMCanonical.value(of: field)
        var scope = value[...]
        if let open = value.lastIndex(of: UInt8(ascii: "<")), let close = value[open...].firstIndex(of: UInt8(ascii: ">")) {
            scope = value[(open + 1)..<close]
        }
        guard let at = scope.lastIndex(of: UInt8(ascii: "@")) else { return nil }
        let domain = scope[(at + 1)...].filter { $0 > 32 && $0 != UInt8(ascii: ">") && $0 != UInt8(ascii: ",") }
        return domain.isEmpty ? nil : String(decoding: domain, as: UTF8.self).lowercased()
    }
}
