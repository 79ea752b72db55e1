// Mailbox providers recognised by their MX host names (issue 18 item 1):
// gmail.com, googlemail.com and every Google-hosted domain share Google's
// limits because their MX hosts end in google.com or googlemail.com. A
// shipped table covers the big providers (docs/providers.md); users add
// their own (`[[provider]]` tables), which take precedence. The longest
// matching suffix wins, on label boundaries. Statistics group by it now;
// traffic shaping will key its destinations by it.

import Foundation

public struct ProviderRule: Sendable, Equatable {
    /// The company in lower case: `google`, `microsoft`, … (how commands name it).
    public var name: String
    /// MX host suffixes, lower case, without a leading or trailing dot.
    public var mxSuffixes: [String]

    public init(name: String, mxSuffixes: [String]) {
        self.name = name.lowercased()
        self.mxSuffixes = mxSuffixes.map { $0.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: ".")) }
    }
}

public struct ProviderTable: Sendable {
    /// suffix → provider, user rules over shipped ones.
    let bySuffix: [String: String]
    public let rules: [ProviderRule]

    /// The shipped rules, then `custom` (whose suffixes replace shipped ones).
    public init(custom: [ProviderRule] = []) {
        var map: [String: String] = [:]
        for r in ProviderTable.shipped + custom { for s in r.mxSuffixes where !s.isEmpty { map[s] = r.name } }
        bySuffix = map
        rules = ProviderTable.shipped + custom
    }

    /// The provider behind an MX host, or nil.
    public func provider(forMX host: String) -> String? {
        var h = Substring(host.lowercased())
        if h.hasSuffix(".") { h = h.dropLast() }
        // From the whole name to its last two labels: the longest suffix first.
        while true {
            if let p = bySuffix[String(h)] { return p }
            guard let dot = h.firstIndex(of: "."), h[h.index(after: dot)...].contains(".") else { return nil }
            h = h[h.index(after: dot)...]
        }
    }

    /// The shipped table: MX host suffixes as the providers publish them in
    /// DNS (gmail.com's MX is gmail-smtp-in.l.google.com, a Workspace domain's
    /// aspmx.l.google.com; outlook.com's and Microsoft 365's end in
    /// protection.outlook.com; yahoo.com's and aol.com's in yahoodns.net;
    /// icloud.com's and me.com's in mail.icloud.com; …).
    public static let shipped: [ProviderRule] = [
        ProviderRule(name: "google", mxSuffixes: ["google.com", "googlemail.com"]),
        ProviderRule(name: "microsoft", mxSuffixes: ["outlook.com", "hotmail.com", "outlook.cn"]),
        ProviderRule(name: "yahoo", mxSuffixes: ["yahoodns.net"]),
        ProviderRule(name: "apple", mxSuffixes: ["icloud.com", "me.com", "apple.com"]),
        ProviderRule(name: "proton", mxSuffixes: ["protonmail.ch"]),
        ProviderRule(name: "fastmail", mxSuffixes: ["messagingengine.com"]),
        ProviderRule(name: "zoho", mxSuffixes: ["zoho.com", "zoho.eu", "zohomail.com"]),
        ProviderRule(name: "yandex", mxSuffixes: ["yandex.net", "yandex.ru"]),
        ProviderRule(name: "mailru", mxSuffixes: ["mail.ru"]),
        ProviderRule(name: "gmx", mxSuffixes: ["gmx.net", "web.de"]),
        ProviderRule(name: "ionos", mxSuffixes: ["ionos.com", "1and1.com", "kundenserver.de"]),
        ProviderRule(name: "comcast", mxSuffixes: ["comcast.net"]),
        ProviderRule(name: "att", mxSuffixes: ["prodigy.net"]),
        ProviderRule(name: "mimecast", mxSuffixes: ["mimecast.com"]),
        ProviderRule(name: "proofpoint", mxSuffixes: ["pphosted.com", "ppe-hosted.com"]),
        ProviderRule(name: "broadcom", mxSuffixes: ["messagelabs.com"]),
        ProviderRule(name: "barracuda", mxSuffixes: ["barracudanetworks.com"]),
        ProviderRule(name: "cisco", mxSuffixes: ["iphmx.com"]),
        ProviderRule(name: "godaddy", mxSuffixes: ["secureserver.net"]),
        ProviderRule(name: "ovh", mxSuffixes: ["ovh.net"]),
        ProviderRule(name: "seznam", mxSuffixes: ["seznam.cz"]),
        ProviderRule(name: "tencent", mxSuffixes: ["qq.com"]),
        ProviderRule(name: "netease", mxSuffixes: ["163.com", "netease.com"]),
        ProviderRule(name: "naver", mxSuffixes: ["naver.com"]),
    ]
}
