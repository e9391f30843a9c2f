// Wood grain: growth rings fract(|p| * k + noise) around an off-image centre (Perlin 1985).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y;
    vec2 centre = vec2(-0.5, 0.5) + (iMouse.xy / iResolution.xy - 0.5) * 2.0;
    vec2 d = (uv - centre) * vec2(1.0, 0.2 + 0.8 * iParams[0].x);
    float r = length(d) * (8.0 + 20.0 * iParams[0].y) + (1.0 + 3.0 * iParams[0].z) * kd_fbm(uv * 6.0 + iTime, 4);
    float ring = fract(r);
    float g = smoothstep(0.0, 0.3, ring) * smoothstep(1.0, 0.6, ring);
    vec3 light = mix(vec3(0.85, 0.62, 0.38), kd_palette(0.3), 0.4 * iParams[0].w);
    fragColor = vec4(mix(light * 0.45, light, g), 1.0);
}
