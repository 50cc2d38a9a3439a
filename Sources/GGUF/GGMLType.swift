/// A tensor's element type as ggml numbers it (the `type` field of a GGUF tensor info). Every type
/// llama.cpp has written is known here by name and block size, so a file is validated and
/// described (`info`) whatever it holds; which types the engine computes with is the loader's
/// business.
public struct GGMLType: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let f32 = GGMLType(rawValue: 0)
    public static let f16 = GGMLType(rawValue: 1)
    public static let q4_0 = GGMLType(rawValue: 2)
    public static let q4_1 = GGMLType(rawValue: 3)
    public static let q5_0 = GGMLType(rawValue: 6)
    public static let q5_1 = GGMLType(rawValue: 7)
    public static let q8_0 = GGMLType(rawValue: 8)
    public static let q8_1 = GGMLType(rawValue: 9)
    public static let q2_K = GGMLType(rawValue: 10)
    public static let q3_K = GGMLType(rawValue: 11)
    public static let q4_K = GGMLType(rawValue: 12)
    public static let q5_K = GGMLType(rawValue: 13)
    public static let q6_K = GGMLType(rawValue: 14)
    public static let q8_K = GGMLType(rawValue: 15)
    public static let iq4_nl = GGMLType(rawValue: 20)
    public static let iq4_xs = GGMLType(rawValue: 23)
    public static let i8 = GGMLType(rawValue: 24)
    public static let i16 = GGMLType(rawValue: 25)
    public static let i32 = GGMLType(rawValue: 26)
    public static let i64 = GGMLType(rawValue: 27)
    public static let f64 = GGMLType(rawValue: 28)
    public static let bf16 = GGMLType(rawValue: 30)
    public static let mxfp4 = GGMLType(rawValue: 39)

    /// (name, values per block, bytes per block) by type number, as ggml's type traits give them.
    /// Numbers 4, 5 and 31-33, 36-38 were types ggml has removed; a file using them is refused.
    static let table: [UInt32: (name: String, blockValues: Int, blockBytes: Int)] = [
        0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22),
        7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110),
        12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
        16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50),
        20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136),
        24: ("I8", 1, 1), 25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
        29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
        39: ("MXFP4", 32, 17), 40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
    ]

    /// Whether ggml knows this type number.
    public var isKnown: Bool { Self.table[rawValue] != nil }
    /// ggml's name ("Q4_K"), or "type N" for a number it does not know.
    public var name: String { Self.table[rawValue]?.name ?? "type \(rawValue)" }
    public var description: String { name }
    /// Values per block (1 for plain numbers); 0 for an unknown type.
    public var blockValues: Int { Self.table[rawValue]?.blockValues ?? 0 }
    /// Bytes per block; 0 for an unknown type.
    public var blockBytes: Int { Self.table[rawValue]?.blockBytes ?? 0 }

    public init?(name: String) {
        guard let entry = Self.table.first(where: { $0.value.name == name.uppercased() }) else { return nil }
        rawValue = entry.key
    }
}
