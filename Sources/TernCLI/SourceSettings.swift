// Source addresses, pools, warm-up and blocklists in the configuration
// (issue 19): `[[source]]` (name, address, ehlo, warmup), `[[pool]]` (name,
// sources with weights, default), `[[pool_rule]]` (which pool a message
// leaves from), `[[warmup_plan]]` (a plan of your own), `[blocklist]`
// (zones, domain_zones, interval, on_listed) and `delivery.pool_header`.

import Foundation
import TernDelivery
import TernIntake
import TernProtocol
import TernScheduler
import TOMLKit

/// One `[[source]]`.
public struct SourceConfig: Sendable, Equatable {
    public var name: String
    public var address: IPAddress
    public var ehlo: String?
    /// A warm-up plan's name (built-in "default" or a `[[warmup_plan]]`).
    public var warmup: String?

    public var outbound: OutboundSource { OutboundSource(name: name, address: address, ehlo: ehlo) }
}

/// One `[[pool]]`.
public struct PoolConfig: Sendable, Equatable {
    public var name: String
    public var sources: [(name: String, weight: Int)]
    public var isDefault: Bool

    public static func == (a: PoolConfig, b: PoolConfig) -> Bool {
        a.name == b.name && a.isDefault == b.isDefault && a.sources.map(\.name) == b.sources.map(\.name) && a.sources.map(\.weight) == b.sources.map(\.weight)
    }
}

extension TernSettings {
    static let blocklistSettings: [Setting] = [
        .list("blocklist.zones", \.blocklist.zones, parse: TernSettings.checkZone, show: { $0 },
              "DNSBL zones each source address is looked up in (empty: no IP lists); default: well-known lists, see docs/warmup.md"),
        .list("blocklist.domain_zones", \.blocklist.domainZones, parse: TernSettings.checkZone, show: { $0 },
              "domain blocklists each source's EHLO domain is looked up in"),
        Setting(key: "blocklist.interval", kind: .text, flag: nil, help: "between checks, a duration (\"1h\", \"30m\")", range: nil,
                defaultText: nil, example: nil, get: { .string("\($0.blocklist.intervalMillis / 1000)s") },
                set: { s, v in
                    guard case .string(let text) = v, let ms = TernSettings.duration(text: text), ms >= 60_000 else {
                        throw ConfigError("'blocklist.interval' must be a duration of at least a minute, such as \"1h\"")
                    }
                    s.blocklist.intervalMillis = ms
                }),
        .choice("blocklist.on_listed", \.blocklist.onListed,
                "pause: a listed source leaves its pools until delisted; alert: events and log lines only"),
    ]

    static func checkZone(_ text: String) throws -> String {
        let z = text.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "."))
        guard !z.isEmpty, z.contains("."), z.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "." || $0 == "-" }) else {
            throw ConfigError("'\(text)' is not a DNS zone")
        }
        return z
    }

    /// The source book (pools and rotation) these settings describe.
    public var sourceBook: SourceBook {
        let byName = Dictionary(uniqueKeysWithValues: sources.map { ($0.name, $0.outbound) })
        let pools = self.pools.map { p in
            SourcePool(name: p.name, members: p.sources.compactMap { m in byName[m.name].map { ($0, m.weight) } })
        }
        return SourceBook(sources: sources.map(\.outbound), pools: pools, defaultPool: self.pools.first(where: \.isDefault)?.name)
    }

    /// How intake picks a message's pool (nil: no pools).
    public var poolChooser: PoolChooser? {
        guard !pools.isEmpty else { return nil }
        return PoolChooser(rules: poolRules, header: poolHeader.isEmpty ? nil : poolHeader, pools: Set(pools.map(\.name)))
    }

    /// `[[source]]` tables.
    static func sourceTables(_ value: any TOMLValueConvertible) throws -> [SourceConfig] {
        let known: Set<String> = ["name", "address", "ehlo", "warmup"]
        var out: [SourceConfig] = []
        for t in try tables(value, "source") {
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key 'source.\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let name = t["name"]?.string, !name.isEmpty, !name.contains(" ") else { throw ConfigError("a [[source]] needs a 'name' (no spaces)") }
            guard let text = t["address"]?.string, let address = IPAddress(text), !address.isUnspecified else {
                throw ConfigError("[[source]] \(name) needs an 'address': the IPv4 or IPv6 address to bind")
            }
            guard !out.contains(where: { $0.name == name }) else { throw ConfigError("[[source]] \(name) is given twice") }
            out.append(SourceConfig(name: name, address: address, ehlo: try string(t, "ehlo", "source"), warmup: try string(t, "warmup", "source")))
        }
        return out
    }

    /// `[[pool]]` tables: `sources` is `{ a = 1, b = 3 }` (weights) or `["a", "b"]` (equal weights).
    static func poolTables(_ value: any TOMLValueConvertible) throws -> [PoolConfig] {
        let known: Set<String> = ["name", "sources", "default"]
        var out: [PoolConfig] = []
        for t in try tables(value, "pool") {
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key 'pool.\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let name = t["name"]?.string, !name.isEmpty else { throw ConfigError("a [[pool]] needs a 'name'") }
            guard !out.contains(where: { $0.name == name }) else { throw ConfigError("[[pool]] \(name) is given twice") }
            var members: [(name: String, weight: Int)] = []
            if let inline = t["sources"]?.table {
                for key in inline.keys.sorted() {
                    guard let w = inline[key]?.int, w >= 0 else { throw ConfigError("[[pool]] \(name): the weight of '\(key)' must be a non-negative integer") }
                    members.append((key, w))
                }
            } else if let list = t["sources"]?.array {
                for item in list {
                    guard let s = item.string else { throw ConfigError("[[pool]] \(name): 'sources' must name sources") }
                    members.append((s, 1))
                }
            } else {
                throw ConfigError("[[pool]] \(name) needs 'sources': { a = 1, b = 3 } or [\"a\", \"b\"]")
            }
            guard members.contains(where: { $0.weight > 0 }) else { throw ConfigError("[[pool]] \(name) needs a source with a weight above 0") }
            var isDefault = false
            if let d = t["default"] {
                guard let b = d.bool else { throw ConfigError("'pool.default' must be true or false") }
                isDefault = b
            }
            out.append(PoolConfig(name: name, sources: members, isDefault: isDefault))
        }
        return out
    }

    /// `[[pool_rule]]` tables: `pool` and any of `sender_domain`, `user`, `listener` (a string or an array each).
    static func poolRuleTables(_ value: any TOMLValueConvertible) throws -> [PoolRule] {
        let known: Set<String> = ["pool", "sender_domain", "user", "listener"]
        return try tables(value, "pool_rule").map { t in
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key 'pool_rule.\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let pool = t["pool"]?.string else { throw ConfigError("a [[pool_rule]] needs a 'pool'") }
            let listeners = try strings(t, "listener", "pool_rule")
            for l in listeners where Origin(rawValue: l) == nil || l == "dsn" {
                throw ConfigError("'pool_rule.listener' must be smtp, submission or local, not '\(l)'")
            }
            let rule = PoolRule(pool: pool, senderDomains: try strings(t, "sender_domain", "pool_rule"), users: try strings(t, "user", "pool_rule"),
                                listeners: listeners)
            guard !(rule.senderDomains.isEmpty && rule.users.isEmpty && rule.listeners.isEmpty) else {
                throw ConfigError("[[pool_rule]] for \(pool) needs sender_domain, user or listener")
            }
            return rule
        }
    }

    /// `[[warmup_plan]]` tables: `name`, `daily` (messages per destination per day), optional `hours` and thresholds.
    static func warmupPlanTables(_ value: any TOMLValueConvertible) throws -> [WarmupPlan] {
        let known: Set<String> = ["name", "daily", "hours", "max_deferral_rate", "max_block_rate", "max_bounce_rate", "min_sample"]
        return try tables(value, "warmup_plan").map { t in
            for key in t.keys where !known.contains(key) {
                throw ConfigError("unknown key 'warmup_plan.\(key)' (known: \(known.sorted().joined(separator: ", ")))")
            }
            guard let name = t["name"]?.string, !name.isEmpty else { throw ConfigError("a [[warmup_plan]] needs a 'name'") }
            guard let daily = t["daily"]?.array?.compactMap({ $0.int }), !daily.isEmpty, daily.count == t["daily"]?.array?.count,
                  daily.allSatisfy({ $0 > 0 }) else {
                throw ConfigError("[[warmup_plan]] \(name) needs 'daily': messages per destination for each day, e.g. [50, 100, 200]")
            }
            var plan = WarmupPlan(name: name, daily: daily)
            if let h = t["hours"] {
                guard let i = h.int, (1...24).contains(i) else { throw ConfigError("'warmup_plan.hours' must be 1 to 24") }
                plan.hours = i
            }
            func rate(_ key: String) throws -> Double? {
                guard let raw = t[key] else { return nil }
                guard let d = raw.double ?? raw.int.map(Double.init), d >= 0, d <= 1 else {
                    throw ConfigError("'warmup_plan.\(key)' must be a share between 0 and 1, such as 0.1")
                }
                return d
            }
            if let r = try rate("max_deferral_rate") { plan.maxDeferralRate = r }
            if let r = try rate("max_block_rate") { plan.maxBlockRate = r }
            if let r = try rate("max_bounce_rate") { plan.maxBounceRate = r }
            if let m = t["min_sample"] {
                guard let i = m.int, i >= 1 else { throw ConfigError("'warmup_plan.min_sample' must be a positive integer") }
                plan.minSample = i
            }
            return plan
        }
    }

    /// Checks between these tables (names that must exist).
    func validateSources() throws {
        let names = Set(sources.map(\.name))
        let plans = Set(warmupPlans.map(\.name) + [WarmupPlan.builtIn.name])
        for s in sources {
            if let w = s.warmup, !plans.contains(w) {
                throw ConfigError("[[source]] \(s.name): no warm-up plan '\(w)' (built in: default; yours: \(warmupPlans.map(\.name).joined(separator: ", ")))")
            }
        }
        for p in pools {
            for m in p.sources where !names.contains(m.name) { throw ConfigError("[[pool]] \(p.name): no [[source]] named '\(m.name)'") }
        }
        if pools.filter(\.isDefault).count > 1 { throw ConfigError("only one [[pool]] may be the default") }
        if !pools.isEmpty && !pools.contains(where: \.isDefault) { throw ConfigError("one [[pool]] must be the default (default = true)") }
        let poolNames = Set(pools.map(\.name))
        for r in poolRules where !poolNames.contains(r.pool) { throw ConfigError("[[pool_rule]]: no [[pool]] named '\(r.pool)'") }
    }

    /// `[[source]]`s, `[[pool]]`s, `[[pool_rule]]`s and `[[warmup_plan]]`s as TOML (`tern config show`).
    var sourcesTOML: String {
        var out = ""
        for s in sources {
            out += "\n[[source]]  # \(origins["source"] ?? "file")\nname = \(SettingValue.quoted(s.name))\naddress = \(SettingValue.quoted(s.address.description))\n"
            if let e = s.ehlo { out += "ehlo = \(SettingValue.quoted(e))\n" }
            if let w = s.warmup { out += "warmup = \(SettingValue.quoted(w))\n" }
        }
        for p in pools {
            out += "\n[[pool]]  # \(origins["pool"] ?? "file")\nname = \(SettingValue.quoted(p.name))\n"
            out += "sources = { " + p.sources.map { "\(SettingValue.quoted($0.name)) = \($0.weight)" }.joined(separator: ", ") + " }\n"
            if p.isDefault { out += "default = true\n" }
        }
        for r in poolRules {
            out += "\n[[pool_rule]]  # \(origins["pool_rule"] ?? "file")\npool = \(SettingValue.quoted(r.pool))\n"
            if !r.senderDomains.isEmpty { out += "sender_domain = [" + r.senderDomains.map(SettingValue.quoted).joined(separator: ", ") + "]\n" }
            if !r.users.isEmpty { out += "user = [" + r.users.map(SettingValue.quoted).joined(separator: ", ") + "]\n" }
            if !r.listeners.isEmpty { out += "listener = [" + r.listeners.map(SettingValue.quoted).joined(separator: ", ") + "]\n" }
        }
        for p in warmupPlans {
            out += "\n[[warmup_plan]]  # \(origins["warmup_plan"] ?? "file")\nname = \(SettingValue.quoted(p.name))\n"
            out += "daily = [" + p.daily.map(String.init).joined(separator: ", ") + "]\nhours = \(p.hours)\n"
            out += "max_deferral_rate = \(p.maxDeferralRate)\nmax_block_rate = \(p.maxBlockRate)\nmax_bounce_rate = \(p.maxBounceRate)\n"
            out += "min_sample = \(p.minSample)\n"
        }
        return out
    }

    private static func tables(_ value: any TOMLValueConvertible, _ name: String) throws -> [TOMLTable] {
        guard let array = value.array else { throw ConfigError("'\(name)' must be an array of tables ([[\(name)]])") }
        return try array.map { item in
            guard let t = item.table else { throw ConfigError("'\(name)' must be an array of tables ([[\(name)]])") }
            return t
        }
    }

    private static func string(_ t: TOMLTable, _ key: String, _ table: String) throws -> String? {
        guard let raw = t[key] else { return nil }
        guard let s = raw.string, !s.isEmpty else { throw ConfigError("'\(table).\(key)' must be a non-empty string") }
        return s
    }

    private static func strings(_ t: TOMLTable, _ key: String, _ table: String) throws -> [String] {
        guard let raw = t[key] else { return [] }
        if let s = raw.string { return [s] }
        guard let a = raw.array else { throw ConfigError("'\(table).\(key)' must be a string or an array of strings") }
        return try a.map { item in
            guard let s = item.string else { throw ConfigError("'\(table).\(key)' must be a string or an array of strings") }
            return s
        }
    }
}
