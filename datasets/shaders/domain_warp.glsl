// Domain warping, f(p + fbm(p + fbm(p))) (Quilez, "Warping", 2002): marbled organic swirls.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = fragCoord / iResolution.y * (1.5 + 4.0 * iParams[0].x) + iMouse.xy * 0.01;
    float w = 2.0 + 4.0 * iParams[0].y;
    vec2 q = vec2(kd_fbm(p, 5), kd_fbm(p + vec2(5.2, 1.3), 5));
    vec2 r = vec2(kd_fbm(p + w * q + vec2(1.7, 9.2) + 0.15 * iTime, 5),
                  kd_fbm(p + w * q + vec2(8.3, 2.8) + 0.126 * iTime, 5));
    float f = kd_fbm(p + w * r, 5);
    vec3 col = mix(kd_palette(f * 1.5), kd_palette(length(q) + iParams[0].z), clamp(length(r) * iParams[0].w, 0.0, 1.0));
    fragColor = vec4(col * (0.4 + 1.2 * f), 1.0);
}
