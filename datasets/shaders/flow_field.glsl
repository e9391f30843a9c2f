// Flow field streaks: a point is advected backwards along a curl-noise field and high-frequency noise is
// averaged along the path, a line-integral convolution (Cabral & Leedom 1993) of the field.
vec2 field(vec2 p) {
    float e = 0.05;
    float n1 = kd_fbm(p + vec2(0.0, e), 3); float n2 = kd_fbm(p - vec2(0.0, e), 3);
    float n3 = kd_fbm(p + vec2(e, 0.0), 3); float n4 = kd_fbm(p - vec2(e, 0.0), 3);
    return normalize(vec2(n1 - n2, n4 - n3) + 1e-5);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = fragCoord / iResolution.y * (1.0 + 3.0 * iParams[0].x) + iTime;
    float freq = 40.0 + 60.0 * iParams[0].y;
    float acc = 0.0;
    vec2 q = p;
    for (int i = 0; i < 12; i++) {
        acc += kd_hash21(floor(q * freq));
        q += field(q) * 0.012;
    }
    acc /= 12.0;
    float angle = atan(field(p).y, field(p).x);
    fragColor = vec4(kd_palette(angle / 6.2831 * (0.5 + iParams[0].z)) * (0.2 + 1.2 * acc), 1.0);
}
