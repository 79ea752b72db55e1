// Domain normalisation for the `recipient.domain` column: lower-case, and
// IDNA A-labels (RFC 5891) via Punycode (RFC 3492) for U-labels.
// Known limit: no UTS #46 mapping tables; labels are only lower-cased
// (Unicode default case mapping) before encoding.

public enum IDNA {
    /// The lower-case A-label form of a domain; nil when a label cannot be encoded.
    public static func toASCII(_ domain: String) -> String? {
        // Almost every domain is ASCII already: check its labels in one pass
        // over the bytes and return it as it is when it is lower-case.
        var upper = false, emptyLabel = true
        var ascii = true
        for b in domain.utf8 {
            if b >= 0x80 { ascii = false; break }
            if b <= 0x20 || b == 0x7F { return nil } // no domain holds a space or a control character
            if b == UInt8(ascii: ".") {
                if emptyLabel { return nil }
                emptyLabel = true
            } else {
                emptyLabel = false
                if b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z") { upper = true }
            }
        }
        if ascii {
            guard !emptyLabel, domain.utf8.count <= 253 else { return nil }
            return upper ? domain.lowercased() : domain
        }
        var labels: [String] = []
        // Split on the scalar ".", not the Character: a "." followed by a
        // combining mark is one Character, and would stay inside a label
        // (found by the address fuzz target: the A-label held dots).
        for scalars in domain.unicodeScalars.split(separator: ".", omittingEmptySubsequences: false) {
            if scalars.isEmpty { return nil }
            if scalars.contains(where: { $0.value <= 0x20 || ($0.value >= 0x7F && $0.value <= 0x9F) }) { return nil }
            var label = ""
            label.unicodeScalars.append(contentsOf: scalars)
            if label.unicodeScalars.allSatisfy({ $0.isASCII }) {
                labels.append(label.lowercased())
            } else {
                let lower = label.lowercased()
                guard let encoded = Punycode.encode(lower) else { return nil }
                labels.append("xn--" + encoded)
            }
        }
        let out = labels.joined(separator: ".")
        return out.utf8.count <= 253 ? out : nil
    }
}

/// RFC 3492 Punycode encoder (the part IDNA needs).
public enum Punycode {
    static let base = 36, tmin = 1, tmax = 26, skew = 38, damp = 700, initialBias = 72, initialN = 128

    static func adapt(_ delta: Int, _ numPoints: Int, _ firstTime: Bool) -> Int {
        var delta = firstTime ? delta / damp : delta / 2
        delta += delta / numPoints
        var k = 0
        while delta > ((base - tmin) * tmax) / 2 {
            delta /= base - tmin
            k += base
        }
        return k + (base - tmin + 1) * delta / (delta + skew)
    }

    static func digit(_ d: Int) -> Character {
        Character(Unicode.Scalar(UInt8(d < 26 ? d + 97 : d + 22)))
    }

    public static func encode(_ input: String) -> String? {
        let scalars = input.unicodeScalars.map { Int($0.value) }
        var output = String(scalars.filter { $0 < 0x80 }.map { Character(Unicode.Scalar(UInt8($0))) })
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append("-") }
        var n = initialN, delta = 0, bias = initialBias
        while handled < scalars.count {
            guard let m = scalars.filter({ $0 >= n }).min() else { return nil }
            let (mul, o1) = (m - n).multipliedReportingOverflow(by: handled + 1)
            if o1 { return nil }
            delta += mul
            n = m
            for c in scalars {
                if c < n { delta += 1 }
                if c == n {
                    var q = delta
                    var k = base
                    while true {
                        let t = k <= bias ? tmin : (k >= bias + tmax ? tmax : k - bias)
                        if q < t { break }
                        output.append(digit(t + (q - t) % (base - t)))
                        q = (q - t) / (base - t)
                        k += base
                    }
                    output.append(digit(q))
                    bias = adapt(delta, handled + 1, handled == basicCount)
                    delta = 0
                    handled += 1
                }
            }
            delta += 1
            n += 1
        }
        return output
    }
}
