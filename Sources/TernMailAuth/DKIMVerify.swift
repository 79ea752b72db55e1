// DKIM verification (RFC 6376 §6, RFC 8301, RFC 8463): every DKIM-Signature
// field of a message is checked on its own and gets a result of its own
// (RFC 8601 §2.7.1). Bounded: at most `maxSignatures` are checked, an h=
// list of at most `maxSignedFields` names, each body hash computed once per
// canonicalisation and length. An l= that leaves part of the body unsigned
// verifies, but its result is `policy`, never `pass`: text appended after
// the signed part must not borrow the signer's name.

import Crypto
import CryptoExtras
import Foundation
import TernMessage
import TernRouting

public enum DKIMResult: String, Sendable, Codable {
    case none, pass, fail, policy, neutral, temperror, permerror
}

public struct DKIMSignatureVerdict: Sendable, Equatable {
    public var result: DKIMResult
    /// d= and s= (empty when the field could not be read that far).
    public var domain: String
    public var selector: String
    public var algorithm: String
    /// The first 8 characters of b=, to tell signatures apart (RFC 6008's header.b).
    public var shortSignature: String
    /// Why, when not pass.
    public var reason: String
    /// The DNS steps taken (the key record look-up).
    public var steps: [String] = []

    public init(result: DKIMResult, domain: String, selector: String, algorithm: String, shortSignature: String, reason: String) {
        self.result = result
        self.domain = domain
        self.selector = selector
        self.algorithm = algorithm
        self.shortSignature = shortSignature
        self.reason = reason
    }
}

public struct DKIMVerifier: Sendable {
    public let dns: any AuthDNS
    public var maxSignatures = 10
    public var maxSignedFields = 100
    /// RSA keys under this many bits verify nothing (RFC 8301 §3.2: 1024).
    public var minimumRSABits = 1024
    let clock: @Sendable () -> Int64

    /// - Parameter clock: milliseconds since 1970 (for x=).
    public init(dns: any AuthDNS, clock: @escaping @Sendable () -> Int64) {
        self.dns = dns
        self.clock = clock
    }

    /// One verdict per signature, top to bottom; empty when the message has none.
    public func verify(_ message: [UInt8]) async -> [DKIMSignatureVerdict] {
        let (fields, bodyStart) = DKIMCanonical.split(message)
        return await verify(message, fields: fields, bodyStart: bodyStart)
    }

    /// The same, over a message whose header fields are already split (`DKIMCanonical.split`).
    public func verify(_ message: [UInt8], fields: [RawHeaderField], bodyStart: Int) async -> [DKIMSignatureVerdict] {
        let signatures = fields.filter { $0.lowercasedName == "dkim-signature" }
        var bodyHashes: [String: [UInt8]] = [:]
        var out: [DKIMSignatureVerdict] = []
        for (n, field) in signatures.enumerated() {
            if n >= maxSignatures {
                out.append(DKIMSignatureVerdict(result: .neutral, domain: "", selector: "", algorithm: "", shortSignature: "",
                                                reason: "more than \(maxSignatures) signatures: not checked"))
                continue
            }
            out.append(await verifyOne(field, fields: fields, body: message[bodyStart...], bodyHashes: &bodyHashes))
        }
        return out
    }

    /// A key record with a long p= cut to its first and last characters.
    static func shortened(_ record: String) -> String {
        guard let p = record.range(of: "p=") else { return record }
        let value = record[p.upperBound...].prefix { $0 != ";" }
        guard value.count > 24 else { return record }
        return record.replacingCharacters(in: value.startIndex..<value.endIndex, with: "\(value.prefix(10))…\(value.suffix(10))")
    }

    func verifyOne(_ field: RawHeaderField, fields: [RawHeaderField], body: ArraySlice<UInt8>,
                   bodyHashes: inout [String: [UInt8]]) async -> DKIMSignatureVerdict {
        var v = DKIMSignatureVerdict(result: .neutral, domain: "", selector: "", algorithm: "", shortSignature: "", reason: "")
        func finish(_ r: DKIMResult, _ why: String) -> DKIMSignatureVerdict {
            v.result = r
            v.reason = why
            return v
        }
        guard let tags = DKIMTagList.parse(DKIMCanonical.value(of: field)) else { return finish(.neutral, "unreadable tag list") }
        v.domain = (tags["d"] ?? "").lowercased()
        v.selector = tags["s"] ?? ""
        v.algorithm = (tags["a"] ?? "").lowercased()
        v.shortSignature = String((tags["b"] ?? "").filter { !$0.isWhitespace }.prefix(8))
        for required in ["v", "a", "b", "bh", "d", "h", "s"] where tags[required] == nil {
            return finish(.neutral, "no \(required)= tag")
        }
        guard tags["v"] == "1" else { return finish(.neutral, "v= is not 1") }
        guard v.algorithm == "rsa-sha256" || v.algorithm == "ed25519-sha256" else {
            return finish(.neutral, "algorithm \(v.algorithm) not accepted (RFC 8301: rsa-sha1 is not)")
        }
        let (hc, bc): (DKIMCanonicalization, DKIMCanonicalization)
        let c = (tags["c"] ?? "simple/simple").lowercased().split(separator: "/", omittingEmptySubsequences: false)
        guard c.count <= 2, let h0 = DKIMCanonicalization(rawValue: String(c[0])),
              let b0 = c.count == 2 ? DKIMCanonicalization(rawValue: String(c[1])) : .simple else {
            return finish(.neutral, "bad c= \(tags["c"] ?? "")")
        }
        (hc, bc) = (h0, b0)
        let names = tags["h"]!.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
        guard names.contains(where: { $0.lowercased() == "from" }) else { return finish(.neutral, "h= does not sign From:") }
        guard names.count <= maxSignedFields else { return finish(.neutral, "h= names more than \(maxSignedFields) fields") }
        guard v.domain.contains("."), !v.selector.isEmpty else { return finish(.neutral, "bad d= or s=") }
        if let i = tags["i"] {
            let id = i.lowercased()
            guard let at = id.lastIndex(of: "@") else { return finish(.neutral, "bad i=") }
            let idDomain = String(id[id.index(after: at)...])
            guard idDomain == v.domain || idDomain.hasSuffix("." + v.domain) else { return finish(.neutral, "i= is not within d=") }
        }
        let now = clock() / 1000
        if let x = tags["x"] {
            guard let expiry = Int64(x) else { return finish(.neutral, "bad x=") }
            if expiry < now { return finish(.fail, "signature expired") }
        }
        var length: Int? = nil
        if let l = tags["l"] {
            guard let n = Int(l.prefix(18)), n >= 0 else { return finish(.neutral, "bad l=") }
            length = n
        }
        guard let claimedBodyHash = Data(base64Encoded: tags["bh"]!.filter { !$0.isWhitespace }),
              let signature = Data(base64Encoded: tags["b"]!.filter { !$0.isWhitespace }) else {
            return finish(.neutral, "bad base64 in bh= or b=")
        }

        // The key (§3.6.2): the first usable record at SELECTOR._domainkey.DOMAIN.
        let keyName = "\(v.selector)._domainkey.\(v.domain)"
        let records: [[UInt8]]
        switch await dns.txtBytes(keyName) {
        case .records(let r):
            records = r
            // The step, with p= shortened: a key is long and says nothing to a reader.
            v.steps.append("TXT \(keyName): " + r.map { "\"\(DKIMVerifier.shortened(String(decoding: $0, as: UTF8.self)))\"" }.joined(separator: " "))
        case .nxdomain, .noRecords:
            v.steps.append("TXT \(keyName): none")
            return finish(.permerror, "no key record at \(keyName)")
        case .temporaryFailure(let why):
            v.steps.append("TXT \(keyName): \(why)")
            return finish(.temperror, "DNS failure looking up \(keyName): \(why)")
        }
        var keyProblem = "no usable key record at \(keyName)"
        var publicKey: PublicKey? = nil
        var strictDomain = false
        for record in records {
            guard let k = DKIMTagList.parse(record[...]) else { keyProblem = "unreadable key record"; continue }
            if let ver = k["v"], ver != "DKIM1" { keyProblem = "key record v= is not DKIM1"; continue }
            if let hashes = k["h"], !hashes.split(separator: ":").contains(where: { $0.trimmingCharacters(in: .whitespaces).lowercased() == "sha256" }) {
                keyProblem = "the key's h= does not allow sha256"
                continue
            }
            if let services = k["s"], !services.split(separator: ":").contains(where: { ["*", "email"].contains($0.trimmingCharacters(in: .whitespaces).lowercased()) }) {
                keyProblem = "the key is not for email (s=)"
                continue
            }
            let kind = (k["k"] ?? "rsa").lowercased()
            guard let p = k["p"] else { keyProblem = "key record without p="; continue }
            let p64 = p.filter { !$0.isWhitespace }
            if p64.isEmpty { return finish(.fail, "key revoked (empty p=) at \(keyName)") }
            guard let der = Data(base64Encoded: p64) else { keyProblem = "bad base64 in the key's p="; continue }
            guard kind == (v.algorithm == "rsa-sha256" ? "rsa" : "ed25519") else { keyProblem = "the key is \(kind), the signature \(v.algorithm)"; continue }
            do {
                publicKey = try PublicKey(kind: kind, der: der, minimumRSABits: minimumRSABits)
            } catch let e as DKIMVerifyError {
                keyProblem = e.reason
                continue
            } catch {
                keyProblem = "unreadable public key"
                continue
            }
            strictDomain = (k["t"] ?? "").split(separator: ":").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "s" }
            break
        }
        guard let publicKey else { return finish(.permerror, keyProblem) }
        if strictDomain, let i = tags["i"], let at = i.lastIndex(of: "@"), i[i.index(after: at)...].lowercased() != v.domain {
            return finish(.fail, "the key's t=s needs i= in d= itself")
        }

        // The body hash (§3.7), once per canonicalisation and length.
        let cacheKey = "\(bc.rawValue)/\(length.map(String.init) ?? "")"
        let canonicalBody: [UInt8]
        var unsignedOctets = 0
        let full = DKIMCanonical.body(body, bc)
        if let length {
            guard length <= full.count else { return finish(.fail, "l=\(length) is longer than the body (\(full.count) octets)") }
            canonicalBody = Array(full.prefix(length))
            unsignedOctets = full.count - length
        } else {
            canonicalBody = full
        }
        let bodyHash: [UInt8]
        if let cached = bodyHashes[cacheKey] { bodyHash = cached } else {
            bodyHash = Array(SHA256.hash(data: canonicalBody))
            bodyHashes[cacheKey] = bodyHash
        }
        guard bodyHash == Array(claimedBodyHash) else { return finish(.fail, "body hash mismatch (the body was changed)") }

        // The header hash (§3.7): the h= fields bottom-up, then this field with b= emptied, without its CRLF.
        var data: [UInt8] = []
        for f in DKIMCanonical.select(names, from: fields) { data += DKIMCanonical.header(f, hc) }
        var own = DKIMCanonical.header(RawHeaderField(raw: DKIMTagList.emptyingB(field.raw), name: field.name), hc)
        if own.suffix(2) == [13, 10] { own.removeLast(2) }
        data += own
        guard publicKey.isValid(signature, for: data) else { return finish(.fail, "signature does not verify (a signed header field was changed)") }
        if unsignedOctets > 0 {
            return finish(.policy, "l=\(length!) leaves \(unsignedOctets) octets of the body unsigned (text appended after signing)")
        }
        return finish(.pass, "")
    }
}

struct DKIMVerifyError: Error {
    var reason: String
}

enum PublicKey {
    case rsa(_RSA.Signing.PublicKey)
    case ed25519(Curve25519.Signing.PublicKey)

    init(kind: String, der: Data, minimumRSABits: Int) throws {
        if kind == "ed25519" {
            guard der.count == 32 else { throw DKIMVerifyError(reason: "an Ed25519 key must be 32 octets") }
            self = .ed25519(try Curve25519.Signing.PublicKey(rawRepresentation: der))
            return
        }
        // swift-crypto reads no key under 1024 bits: the size is read from the DER first, so the reason can name it.
        if let bits = PublicKey.rsaModulusBits(Array(der)), bits < minimumRSABits {
            throw DKIMVerifyError(reason: "an RSA key of \(bits) bits is too small (RFC 8301: at least \(minimumRSABits))")
        }
        // A huge key costs the verifier, not the signer: RFC 8301 §3.2 asks verifiers to handle up to 4096 bits.
        if let bits = PublicKey.rsaModulusBits(Array(der)), bits > 8192 {
            throw DKIMVerifyError(reason: "an RSA key of \(bits) bits is too large to verify (at most 8192)")
        }
        let key: _RSA.Signing.PublicKey
        do { key = try _RSA.Signing.PublicKey(unsafeDERRepresentation: der) } catch { throw DKIMVerifyError(reason: "unreadable RSA public key") }
        guard key.keySizeInBits >= minimumRSABits else {
            throw DKIMVerifyError(reason: "an RSA key of \(key.keySizeInBits) bits is too small (RFC 8301: at least \(minimumRSABits))")
        }
        self = .rsa(key)
    }

    /// The modulus size of an RSA public key in DER: SubjectPublicKeyInfo (RFC 5280) or RSAPublicKey (RFC 8017).
    static func rsaModulusBits(_ d: [UInt8]) -> Int? {
        /// (tag, content range) of the element at `i`.
        func element(_ i: Int) -> (UInt8, Range<Int>)? {
            guard i + 2 <= d.count else { return nil }
            var len = Int(d[i + 1])
            var start = i + 2
            if len & 0x80 != 0 {
                let n = len & 0x7f
                guard n >= 1, n <= 3, start + n <= d.count else { return nil }
                len = d[start..<start + n].reduce(0) { $0 << 8 | Int($1) }
                start += n
            }
            guard start + len <= d.count else { return nil }
            return (d[i], start..<start + len)
        }
        guard let (t0, outer) = element(0), t0 == 0x30, let (t1, first) = element(outer.lowerBound) else { return nil }
        var modulus: Range<Int>
        if t1 == 0x02 {
            modulus = first // RSAPublicKey: the first INTEGER
        } else {
            // SPKI: skip the AlgorithmIdentifier; the BIT STRING holds an RSAPublicKey after its unused-bits octet.
            guard t1 == 0x30, let (t2, bits) = element(first.upperBound), t2 == 0x03, !bits.isEmpty,
                  let (t3, inner) = element(bits.lowerBound + 1), t3 == 0x30, let (t4, n) = element(inner.lowerBound), t4 == 0x02 else { return nil }
            modulus = n
        }
        while !modulus.isEmpty, d[modulus.lowerBound] == 0 { modulus = modulus.lowerBound + 1..<modulus.upperBound }
        guard let top = modulus.first.map({ d[$0] }) else { return 0 }
        return (modulus.count - 1) * 8 + (8 - top.leadingZeroBitCount)
    }

    func isValid(_ signature: Data, for data: [UInt8]) -> Bool {
        switch self {
        case .rsa(let k):
            return k.isValidSignature(_RSA.Signing.RSASignature(rawRepresentation: signature), for: data, padding: .insecurePKCS1v1_5)
        case .ed25519(let k):
            return k.isValidSignature(signature, for: Data(SHA256.hash(data: data)))
        }
    }
}
