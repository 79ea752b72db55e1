// Domain names as SPF and DMARC compare them.

/// Whether a name can be looked up as a domain (§4.3): labels of 1 to 63 octets, at least two, 253 octets at most.
func isValidDomain(_ name: String) -> Bool {
    var n = Substring(name)
    if n.hasSuffix(".") { n = n.dropLast() }
    guard !n.isEmpty, n.utf8.count <= 253 else { return false }
    let labels = n.split(separator: ".", omittingEmptySubsequences: false)
    return labels.count >= 2 && labels.allSatisfy { !$0.isEmpty && $0.utf8.count <= 63 }
}

extension String {
    var trimmingDot: String { hasSuffix(".") ? String(dropLast()) : self }
}

import Synchronization

/// Parsed records by their text: the DNS cache keeps the text, and parsing
/// it again for every message showed in the intake profile. Bounded: when
/// full, it starts again empty.
final class ParseCache<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    let entries = Mutex<[Key: Value]>([:])
    let capacity: Int

    init(capacity: Int = 10_000) { self.capacity = capacity }

    func value(_ key: Key, _ make: () -> Value) -> Value {
        if let hit = entries.withLock({ $0[key] }) { return hit }
        let made = make()
        entries.withLock { e in
            if e.count >= capacity { e.removeAll(keepingCapacity: true) }
            e[key] = made
        }
        return made
    }
}
