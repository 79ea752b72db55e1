// DKIM's tag=value lists (RFC 6376 §3.2), for signature fields and key
// records: pure code over bytes (the fuzz-auth target drives it).

import Foundation

/// DKIM's tag=value lists (RFC 6376 §3.2).
public enum DKIMTagList {
    /// Tags by name; nil for a list that is not one (a tag twice, a bad name).
    public static func parse(_ value: ArraySlice<UInt8>) -> [String: String]? {
        let text = String(decoding: value, as: UTF8.self)
        var out: [String: String] = [:]
        for spec in text.split(separator: ";", omittingEmptySubsequences: false) {
            let trimmed = spec.trimmingCharacters(in: .whitespacesAndNewlines)
            if trimmed.isEmpty { continue }
            guard let eq = trimmed.firstIndex(of: "=") else { return nil }
            let name = trimmed[..<eq].trimmingCharacters(in: .whitespacesAndNewlines)
            guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }), out[name] == nil else { return nil }
            // Folding whitespace inside a value is removed where it cannot matter; base64 callers strip all of it.
            let v = trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespacesAndNewlines)
            out[name] = v.replacingOccurrences(of: "\r\n", with: "")
        }
        return out
    }

    /// The field with the value of its b= tag removed, all else as it was (§3.7).
    public static func emptyingB(_ raw: [UInt8]) -> [UInt8] {
        guard let colon = raw.firstIndex(of: UInt8(ascii: ":")) else { return raw }
        var i = colon + 1
        while i < raw.count {
            // At the start of a tag-spec: skip FWS, read the name.
            var j = i
            while j < raw.count, [32, 9, 13, 10].contains(raw[j]) { j += 1 }
            var k = j
            while k < raw.count, raw[k] != UInt8(ascii: "="), raw[k] != UInt8(ascii: ";") { k += 1 }
            var nameEnd = k
            while nameEnd > j, [32, 9, 13, 10].contains(raw[nameEnd - 1]) { nameEnd -= 1 }
            let end = raw[k...].firstIndex(of: UInt8(ascii: ";")) ?? raw.count
            if raw[j..<nameEnd].elementsEqual([UInt8(ascii: "b")]), k < raw.count, raw[k] == UInt8(ascii: "=") {
                // Keep the field's final line break.
                var valueEnd = end
                if end == raw.count {
                    while valueEnd > k + 1, raw[valueEnd - 1] == 10 || raw[valueEnd - 1] == 13 { valueEnd -= 1 }
                }
                return Array(raw[...k]) + Array(raw[valueEnd...])
            }
            i = end + 1
        }
        return raw
    }
}
