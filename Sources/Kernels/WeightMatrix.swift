import KernelsC

/// How a weight matrix's elements are stored. Weights are widened exactly to f32 as they are read
/// (bf16 by a shift, f16 by the hardware conversion, Q8_0 as its int8 values times the block's
/// scale), unless a product with block-quantised weights runs with int8 activations.
public enum WeightElement: Sendable, Equatable {
    case f32, f16, bf16
    /// GGUF's Q8_0: blocks of 32 values, a float16 scale then 32 int8.
    case q8_0
    /// GGUF's Q4_0: blocks of 32 values, a float16 scale then 16 bytes of 4-bit values.
    case q4_0
    /// GGUF's Q4_K: super-blocks of 256 values with 6-bit scales and mins per 32, 4-bit values.
    case q4_k
    /// OCP MXFP4 in GGUF's blocks: 32 E2M1 values sharing one E8M0 scale, 17 bytes (GPT-OSS's experts).
    case mxfp4
    /// The rest of GGUF's formats (see GGMLBlocks): Q4_1, Q5_0, Q5_1 (32 values a block), the
    /// K-quants Q2_K, Q3_K, Q5_K, Q6_K (256), IQ4_NL (32) and IQ4_XS (256).
    case q4_1, q5_0, q5_1, q2_k, q3_k, q5_k, q6_k, iq4_nl, iq4_xs
    /// Q8_0 and Q4_0 regrouped at load for the integer kernels: groups of 4 blocks with their
    /// scales together (see GroupedBlocks); the same bytes per row as GGUF's.
    case q8_0x4, q4_0x4

    /// Whether rows are in blocks (columns must be a multiple of `blockValues`).
    @inlinable public var isBlockQuantized: Bool { blockValues > 1 }

    /// Values per block: 32 for Q8_0 and Q4_0, 256 for Q4_K, 1 for plain floats.
    @inlinable public var blockValues: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q8_0, .q4_0, .mxfp4, .q4_1, .q5_0, .q5_1, .iq4_nl: return 32
        case .q4_k, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_xs: return Q4_K.blockValues
        case .q8_0x4, .q4_0x4: return GroupedBlocks.groupValues
        }
    }

    /// Elements in a stored row of `rowBytes` bytes: the inverse of `rowBytes(_:)`.
    @inlinable public func columns(rowBytes: Int) -> Int {
        rowBytes / self.rowBytes(blockValues) * blockValues
    }

    /// Bytes of a row of `columns` elements (a multiple of `blockValues`).
    @inlinable public func rowBytes(_ columns: Int) -> Int {
        switch self {
        case .f32: return columns * 4
        case .f16, .bf16: return columns * 2
        case .q8_0: return columns / 32 * Q8_0.blockBytes
        case .q4_0: return columns / 32 * Q4_0.blockBytes
        case .q4_k: return columns / Q4_K.blockValues * Q4_K.blockBytes
        case .mxfp4: return columns / 32 * MXFP4.blockBytes
        case .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs: return columns / blockValues * GGMLBlocks.blockBytes(self)
        case .q8_0x4, .q4_0x4: return columns / 128 * GroupedBlocks.groupBytes(q4: self == .q4_0x4)
        }
    }
}

/// What the activations of a product are: float32 (exact: the weights are widened); int8 quantised
/// per block of 32 for integer dot products with block-quantised weights (llama.cpp's way, faster,
/// within about 1e-2 relative); or bf16 for products with bf16 weights (llama.cpp's BF16 path).
/// Weights of other kinds use float32 activations whatever the choice.
public enum ActivationPrecision: String, Sendable, CaseIterable {
    case f32
    /// Rounded to int8 per block of 32 for products with block-quantised weights.
    case int8
    /// Rounded to bf16 for products with bf16 weights (`vdpbf16ps` where the CPU has it).
    case bf16
    /// Both: int8 for block-quantised weights, bf16 for bf16 ones (a model quantised in part).
    case int8bf16 = "int8+bf16"

    /// Whether products with block-quantised weights take int8 activations.
    public var quantizesActivations: Bool { self == .int8 || self == .int8bf16 }
    /// Whether products with bf16 weights take activations rounded to bf16.
    public var roundsActivationsToBF16: Bool { self == .bf16 || self == .int8bf16 }
}

/// Which memory a weight's bytes are in. A value, so a device decides where a product runs without
/// guessing from an address.
public enum WeightLocation: Sendable, Equatable {
    /// Host memory (a file mapping or a host buffer): the CPU kernels read it.
    case host
    /// The accelerator's memory, `offset` bytes from its start. The matrix's `data` is then an
    /// address in that memory, which only the accelerator's own kernels may dereference (the host
    /// cannot read a GPU's memory; the emulated accelerator's happens to be host memory).
    case accelerator(offset: Int)
}

/// A read-only row-major matrix in memory it does not own (usually a memory-mapped file).
public struct WeightMatrix: @unchecked Sendable {
    public let element: WeightElement
    /// Output features: one row per output element.
    public let rows: Int
    /// Input features: the length of each row.
    public let columns: Int
    /// The first row's address in the memory `location` names.
    public let data: UnsafeRawPointer
    public let location: WeightLocation

    public init(element: WeightElement, rows: Int, columns: Int, data: UnsafeRawPointer, location: WeightLocation = .host) {
        self.element = element
        self.rows = rows
        self.columns = columns
        self.data = data
        self.location = location
    }

    @inlinable public var rowBytes: Int { element.rowBytes(columns) }

    /// Bytes of the whole matrix.
    @inlinable public var byteCount: Int { rows * rowBytes }

    /// A block of consecutive rows, for weights that are several matrices stacked.
    @inlinable public func rows(_ range: Range<Int>) -> WeightMatrix {
        let skip = range.lowerBound * rowBytes
        let moved: WeightLocation
        switch location {
        case .host: moved = .host
        case .accelerator(let offset): moved = .accelerator(offset: offset + skip)
        }
        return WeightMatrix(element: element, rows: range.count, columns: columns, data: data + skip, location: moved)
    }

    /// The same matrix at another address (a copy of its bytes made elsewhere).
    @inlinable public func moved(to data: UnsafeRawPointer, location: WeightLocation = .host) -> WeightMatrix {
        WeightMatrix(element: element, rows: rows, columns: columns, data: data, location: location)
    }

    /// Row `r` widened to f32 into `out` (`columns` values; host memory only): an embedding lookup.
    public func widenRow(_ r: Int, into out: UnsafeMutablePointer<Float>) {
        if GGMLBlocks.handles(element) {
            GGMLBlocks.widenRow(element, data + r * rowBytes, columns, into: out)
        } else {
            for c in 0..<columns { out[c] = value(r, c) }
        }
    }

    /// Element (r, c) widened to f32; for tests and slow paths (host memory only).
    public func value(_ r: Int, _ c: Int) -> Float {
        let offset = r * columns + c
        switch element {
        case .f32: return data.load(fromByteOffset: offset * 4, as: Float.self)
        case .f16: return Float(data.load(fromByteOffset: offset * 2, as: Float16.self))
        case .bf16: return Float(bitPattern: UInt32(data.load(fromByteOffset: offset * 2, as: UInt16.self)) << 16)
        case .q8_0: return Q8_0.value(data + r * rowBytes, c)
        case .q4_0: return Q4_0.value(data + r * rowBytes, c)
        case .q4_k: return Q4_K.value(data + r * rowBytes, c)
        case .mxfp4: return MXFP4.value(data + r * rowBytes, c)
        case .q4_1, .q5_0, .q5_1, .q2_k, .q3_k, .q5_k, .q6_k, .iq4_nl, .iq4_xs: return GGMLBlocks.value(element, data + r * rowBytes, c)
        case .q8_0x4, .q4_0x4: return GroupedBlocks.value(data + r * rowBytes, c, q4: element == .q4_0x4)
        }
    }
}

/// Kernel choices measured per machine (see `KernelChoice`): a value that travels with the
/// device that computes, not a process-wide setting. Every choice gives the same bits.
public struct KernelTuning: Sendable, Equatable {
    /// bf16 products take their tokens 5 a pass through the AVX-512 tiles from this many tokens on
    /// (never below 5), 4 a pass below it. Int.max: always 4.
    public var bf16FiveTokenPassesFrom: Int
    /// Several experts of a layer run as one grouped pass (two parallel regions for all of them)
    /// while they average fewer tokens than this, as one dense product each from it on (EPS-MoE's
    /// GroupGemm against DenseGemm). 0: always dense; Int.max: always grouped. Same bits either way.
    public var groupedExpertsBelow: Int
    /// Grouped Q8_0/Q4_0 products of one pass (at most 4 tokens) run AVX512-VNNI's tiles of 4 rows
    /// on 512 bits from this many tokens on, a row at a time on 256 bits below (see `TileChoice`);
    /// longer products always take the tiles. 1: always tiles.
    public var integerTilesFrom: Int
    /// The same for bf16 products on vdpbf16ps (one pass: at most 6 tokens; one row at a time on 512 bits).
    public var bf16TilesFrom: Int

    public init(bf16FiveTokenPassesFrom: Int = 5, groupedExpertsBelow: Int = 0, integerTilesFrom: Int = 1, bf16TilesFrom: Int = 1) {
        self.bf16FiveTokenPassesFrom = bf16FiveTokenPassesFrom
        self.groupedExpertsBelow = groupedExpertsBelow
        self.integerTilesFrom = integerTilesFrom
        self.bf16TilesFrom = bf16TilesFrom
    }

    /// Whether `experts` experts with `tokens` tokens in all run as one grouped pass.
    @inlinable
    public func groupsExperts(_ experts: Int, tokens: Int) -> Bool {
        guard experts > 1, groupedExpertsBelow > 0 else { return false }
        return groupedExpertsBelow == Int.max || tokens < groupedExpertsBelow * experts
    }

    /// What products use until something is measured.
    public static let `default` = KernelTuning()
}

/// The little-endian IEEE binary16 at `p + offset`, widened (exact): every GGUF block's scales.
@inlinable @inline(__always)
public func widenedHalf(_ p: UnsafeRawPointer, _ offset: Int = 0) -> Float {
    Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
}
