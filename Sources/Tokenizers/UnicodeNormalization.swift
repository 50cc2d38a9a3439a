/// Unicode normalisation forms (UAX #15) from generated tables, without Foundation or ICU.
public enum NormalizationForm: String, Sendable {
    case nfc = "NFC", nfd = "NFD", nfkc = "NFKC", nfkd = "NFKD"
}

enum UnicodeNormalization {
    struct Tables: Sendable {
        var canonical: [UInt32: [UInt32]] = [:]
        var compatibility: [UInt32: [UInt32]] = [:]
        var compositions: [UInt64: UInt32] = [:]
        var classes: [UInt32: UInt8] = [:]
    }

    /// Parsed once, on first use.
    static let tables: Tables = {
        var t = Tables()
        for line in UnicodeTables.decompositions.split(separator: "\n") {
            guard let at = line.firstIndex(where: { $0 == ">" || $0 == "<" || $0 == "=" }),
                let cp = UInt32(line[..<at], radix: 16)
            else { continue }
            let parts = line[line.index(after: at)...].split(separator: " ").compactMap { UInt32($0, radix: 16) }
            switch line[at] {
            case "=":
                t.compatibility[cp] = parts
            default:
                t.canonical[cp] = parts
                if line[at] == ">" { t.compositions[UInt64(parts[0]) << 32 | UInt64(parts[1])] = cp }
            }
        }
        for line in UnicodeTables.combiningClasses.split(separator: "\n") {
            let p = line.split(separator: ":")
            if p.count == 2, let cp = UInt32(p[0], radix: 16), let c = UInt8(p[1]) { t.classes[cp] = c }
        }
        return t
    }()

    // Hangul syllables are composed and decomposed by arithmetic (UAX #15, 3.12).
    static let sBase: UInt32 = 0xAC00, lBase: UInt32 = 0x1100, vBase: UInt32 = 0x1161, tBase: UInt32 = 0x11A7
    static let lCount: UInt32 = 19, vCount: UInt32 = 21, tCount: UInt32 = 28
    static var nCount: UInt32 { vCount * tCount }
    static var sCount: UInt32 { lCount * nCount }

    static func normalize(_ s: String, _ form: NormalizationForm) -> String {
        // Most text is ASCII, which every form leaves unchanged.
        if s.utf8.allSatisfy({ $0 < 0x80 }) { return s }
        let t = tables
        let compat = form == .nfkc || form == .nfkd
        var scalars: [UInt32] = []
        scalars.reserveCapacity(s.unicodeScalars.count)
        for u in s.unicodeScalars { decompose(u.value, compat: compat, tables: t, into: &scalars) }
        reorder(&scalars, t)
        if form == .nfc || form == .nfkc { scalars = compose(scalars, t) }
        var out = String.UnicodeScalarView()
        for v in scalars { out.append(Unicode.Scalar(v)!) }
        return String(out)
    }

    static func decompose(_ cp: UInt32, compat: Bool, tables t: Tables, into out: inout [UInt32]) {
        if cp >= sBase && cp < sBase + sCount {
            let index = cp - sBase
            out.append(lBase + index / nCount)
            out.append(vBase + (index % nCount) / tCount)
            if index % tCount != 0 { out.append(tBase + index % tCount) }
            return
        }
        if let parts = t.canonical[cp] ?? (compat ? t.compatibility[cp] : nil) {
            for p in parts { decompose(p, compat: compat, tables: t, into: &out) }
        } else {
            out.append(cp)
        }
    }

    /// Canonical ordering: a stable sort by combining class within each run of non-starters.
    static func reorder(_ s: inout [UInt32], _ t: Tables) {
        var i = 0
        while i < s.count {
            guard (t.classes[s[i]] ?? 0) != 0 else { i += 1; continue }
            var end = i
            while end < s.count, (t.classes[s[end]] ?? 0) != 0 { end += 1 }
            if end - i > 1 {
                let run = s[i..<end].enumerated().sorted { a, b in
                    let ca = t.classes[a.element]!, cb = t.classes[b.element]!
                    return ca != cb ? ca < cb : a.offset < b.offset
                }.map(\.element)
                s.replaceSubrange(i..<end, with: run)
            }
            i = end
        }
    }

    /// Canonical composition: each character joins the last starter unless blocked by a character
    /// in between with class 0 or with a class not lower than its own.
    static func compose(_ s: [UInt32], _ t: Tables) -> [UInt32] {
        var out: [UInt32] = []
        out.reserveCapacity(s.count)
        var starter: Int?
        var lastClass: UInt8 = 0
        for cp in s {
            let cc = t.classes[cp] ?? 0
            if let si = starter {
                let adjacent = out.count - 1 == si
                if adjacent || (lastClass != 0 && lastClass < cc), let composite = composePair(out[si], cp, t) {
                    out[si] = composite
                    continue
                }
            }
            if cc == 0 { starter = out.count }
            out.append(cp)
            lastClass = cc
        }
        return out
    }

    static func composePair(_ a: UInt32, _ b: UInt32, _ t: Tables) -> UInt32? {
        if a >= lBase && a < lBase + lCount && b >= vBase && b < vBase + vCount {
            return sBase + ((a - lBase) * vCount + (b - vBase)) * tCount
        }
        if a >= sBase && a < sBase + sCount && (a - sBase) % tCount == 0 && b > tBase && b < tBase + tCount {
            return a + (b - tBase)
        }
        return t.compositions[UInt64(a) << 32 | UInt64(b)]
    }
}
