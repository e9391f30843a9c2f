// Metaballs (Blinn 1982): an implicit sum of 1/r^2 fields, cut into iso-bands.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y;
    int balls = 3 + int(iParams[0].x * 6.0);
    float field = 0.0;
    for (int i = 0; i < 9; i++) {
        if (i >= balls) break;
        vec2 c = 0.1 + 0.8 * kd_hash22(vec2(float(i) * 7.3, iTime));
        float r = 0.03 + 0.08 * kd_hash11(float(i) + iTime);
        vec2 d = uv - c;
        field += r * r / dot(d, d);
    }
    float bands = floor(field * (1.0 + 4.0 * iParams[0].y));
    vec3 col = field > 1.0 ? kd_palette(bands * 0.15 + iParams[0].z) : kd_palette(field * 0.5) * 0.3;
    fragColor = vec4(col, 1.0);
}
